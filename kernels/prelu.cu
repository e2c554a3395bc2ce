// PReLU on x viewed as (N, S, P), S = the number of slopes (C, or 1 for one shared slope):
//   y = x > 0 ? x : w[c] x;   dx = x > 0 ? g : w[c] g;   dw[c] = sum_{n, p: x <= 0} g x.
// The slope gradient is one block per slope with a shared-memory tree reduction (as bias_grad): deterministic.
#include "common.cuh"

template <typename T>
__device__ void prelu_forward(const T* x, const T* w, T* y, idx_t N, idx_t S, idx_t P) {
    MINISR_GRID_STRIDE(k, N * S * P) {
        T v = x[k];
        y[k] = v > 0 ? v : v * w[(k / P) % S];
    }
}

template <typename T>
__device__ void prelu_input_grad(const T* g, const T* x, const T* w, T* dx, idx_t N, idx_t S, idx_t P) {
    MINISR_GRID_STRIDE(k, N * S * P) { dx[k] = x[k] > 0 ? g[k] : g[k] * w[(k / P) % S]; }
}

template <typename T>
__device__ void prelu_weight_grad(const T* g, const T* x, T* dw, idx_t N, idx_t S, idx_t P) {
    extern __shared__ unsigned char smem_raw[];
    T* smem = reinterpret_cast<T*>(smem_raw);
    const idx_t c = blockIdx.x;
    T acc = 0;
    for (idx_t k = threadIdx.x; k < N * P; k += blockDim.x) {
        idx_t n = k / P, p = k % P;
        idx_t i = (n * S + c) * P + p;
        if (x[i] <= 0) acc += g[i] * x[i];
    }
    smem[threadIdx.x] = acc;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) smem[threadIdx.x] += smem[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) dw[c] = smem[0];
}

#define INSTANTIATE(T, S_)                                                                                         \
    extern "C" __global__ void prelu_forward_##S_(const T* x, const T* w, T* y, idx_t N, idx_t S, idx_t P) {      \
        prelu_forward<T>(x, w, y, N, S, P);                                                                        \
    }                                                                                                              \
    extern "C" __global__ void prelu_input_grad_##S_(const T* g, const T* x, const T* w, T* dx, idx_t N, idx_t S, \
                                                     idx_t P) {                                                    \
        prelu_input_grad<T>(g, x, w, dx, N, S, P);                                                                 \
    }                                                                                                              \
    extern "C" __global__ void prelu_weight_grad_##S_(const T* g, const T* x, T* dw, idx_t N, idx_t S, idx_t P) { \
        prelu_weight_grad<T>(g, x, dw, N, S, P);                                                                   \
    }

INSTANTIATE(float, f32)
INSTANTIATE(double, f64)
