// Fused optimizer updates, in place, torch.optim's rules (see minisr/backends/numpy_backend.py):
//   SGD:  d = g + wd p;  buf = d (first step) or momentum buf + (1 - dampening) d;  d = d + momentum buf (Nesterov)
//         or buf;  p -= lr d
//   Adam: d = g + wd p;  m = b1 m + (1 - b1) d;  v = b2 v + (1 - b2) d^2;  p -= step_size m / (sqrt(v) / sqrt_bc2 + eps)
#include "common.cuh"

#define INSTANTIATE(T, S)                                                                                       \
    extern "C" __global__ void sgd_update_##S(T* p, const T* g, T* buf, T lr, T momentum, T dampening, T wd,   \
                                              int nesterov, int first, int use_buf, idx_t n) {                  \
        MINISR_GRID_STRIDE(k, n) {                                                                              \
            T d = g[k] + wd * p[k];                                                                             \
            if (use_buf) {                                                                                      \
                buf[k] = first ? d : momentum * buf[k] + (1 - dampening) * d;                                   \
                d = nesterov ? d + momentum * buf[k] : buf[k];                                                  \
            }                                                                                                   \
            p[k] -= lr * d;                                                                                     \
        }                                                                                                       \
    }                                                                                                           \
    extern "C" __global__ void adam_update_##S(T* p, const T* g, T* m, T* v, T step_size, T b1, T b2, T eps,   \
                                               T sqrt_bc2, T wd, idx_t n) {                                     \
        MINISR_GRID_STRIDE(k, n) {                                                                              \
            T d = g[k] + wd * p[k];                                                                             \
            m[k] = b1 * m[k] + (1 - b1) * d;                                                                    \
            v[k] = b2 * v[k] + (1 - b2) * d * d;                                                                \
            p[k] -= step_size * m[k] / (sqrt(v[k]) / sqrt_bc2 + eps);                                           \
        }                                                                                                       \
    }

INSTANTIATE(float, f32)
INSTANTIATE(double, f64)
