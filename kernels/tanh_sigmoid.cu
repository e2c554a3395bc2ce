// tanh and the logistic sigmoid, forward and backward (from the forward output y), elementwise over flat arrays.
//   tanh:    y = tanh(x),           dx = g (1 - y^2)
//   sigmoid: y = 1 / (1 + e^-x),    dx = g y (1 - y)     (e^x / (1 + e^x) for x < 0: exp never overflows)
#include "common.cuh"

__device__ inline float tanh_(float v) { return tanhf(v); }
__device__ inline double tanh_(double v) { return tanh(v); }
__device__ inline float exp_(float v) { return expf(v); }
__device__ inline double exp_(double v) { return exp(v); }

#define INSTANTIATE(T, S)                                                                                        \
    extern "C" __global__ void tanh_forward_##S(const T* x, T* y, idx_t n) {                                    \
        MINISR_GRID_STRIDE(k, n) { y[k] = tanh_(x[k]); }                                                        \
    }                                                                                                            \
    extern "C" __global__ void tanh_backward_##S(const T* g, const T* y, T* dx, idx_t n) {                      \
        MINISR_GRID_STRIDE(k, n) { dx[k] = g[k] * ((T)1 - y[k] * y[k]); }                                       \
    }                                                                                                            \
    extern "C" __global__ void sigmoid_forward_##S(const T* x, T* y, idx_t n) {                                 \
        MINISR_GRID_STRIDE(k, n) {                                                                               \
            T v = x[k];                                                                                          \
            if (v >= 0) {                                                                                        \
                y[k] = (T)1 / ((T)1 + exp_(-v));                                                                 \
            } else {                                                                                             \
                T e = exp_(v);                                                                                   \
                y[k] = e / ((T)1 + e);                                                                           \
            }                                                                                                    \
        }                                                                                                        \
    }                                                                                                            \
    extern "C" __global__ void sigmoid_backward_##S(const T* g, const T* y, T* dx, idx_t n) {                   \
        MINISR_GRID_STRIDE(k, n) { dx[k] = g[k] * y[k] * ((T)1 - y[k]); }                                       \
    }

INSTANTIATE(float, f32)
INSTANTIATE(double, f64)
