// Bias add (in place, y[n, o, p] += b[o]) and its gradient db[o] = sum_{n, p} g[n, o, p].
// The gradient is one block per output channel with a shared-memory tree reduction: deterministic, no atomics.
#include "common.cuh"

template <typename T>
__device__ void bias_add(T* y, const T* b, idx_t N, idx_t O, idx_t P) {
    MINISR_GRID_STRIDE(k, N * O * P) { y[k] += b[(k / P) % O]; }
}

template <typename T>
__device__ void bias_grad(const T* g, T* db, idx_t N, idx_t O, idx_t P) {
    extern __shared__ unsigned char smem_raw[];
    T* smem = reinterpret_cast<T*>(smem_raw);
    const idx_t o = blockIdx.x;
    T acc = 0;
    for (idx_t k = threadIdx.x; k < N * P; k += blockDim.x) {
        idx_t n = k / P, p = k % P;
        acc += g[(n * O + o) * P + p];
    }
    smem[threadIdx.x] = acc;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) smem[threadIdx.x] += smem[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) db[o] = smem[0];
}

#define INSTANTIATE(T, S)                                                                                    \
    extern "C" __global__ void bias_add_##S(T* y, const T* b, idx_t N, idx_t O, idx_t P) {                  \
        bias_add<T>(y, b, N, O, P);                                                                          \
    }                                                                                                        \
    extern "C" __global__ void bias_grad_##S(const T* g, T* db, idx_t N, idx_t O, idx_t P) {                \
        bias_grad<T>(g, db, N, O, P);                                                                        \
    }

INSTANTIATE(float, f32)
INSTANTIATE(double, f64)
