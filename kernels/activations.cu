// ReLU and leaky ReLU, forward and backward, elementwise over flat arrays.
#include "common.cuh"

#define INSTANTIATE(T, S)                                                                                        \
    extern "C" __global__ void relu_forward_##S(const T* x, T* y, idx_t n) {                                    \
        MINISR_GRID_STRIDE(k, n) { y[k] = x[k] > 0 ? x[k] : (T)0; }                                             \
    }                                                                                                            \
    extern "C" __global__ void relu_backward_##S(const T* g, const T* y, T* dx, idx_t n) {                      \
        MINISR_GRID_STRIDE(k, n) { dx[k] = y[k] > 0 ? g[k] : (T)0; }                                            \
    }                                                                                                            \
    extern "C" __global__ void leaky_relu_forward_##S(const T* x, T slope, T* y, idx_t n) {                     \
        MINISR_GRID_STRIDE(k, n) { y[k] = x[k] > 0 ? x[k] : x[k] * slope; }                                     \
    }                                                                                                            \
    extern "C" __global__ void leaky_relu_backward_##S(const T* g, const T* x, T slope, T* dx, idx_t n) {       \
        MINISR_GRID_STRIDE(k, n) { dx[k] = x[k] > 0 ? g[k] : g[k] * slope; }                                    \
    }

INSTANTIATE(float, f32)
INSTANTIATE(double, f64)
