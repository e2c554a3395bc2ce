// Loss reductions: per-block partial sums of (a - b)^2 or |a - b| (summed on the host side by a second, tiny
// reduction: deterministic, no atomics), and the elementwise gradients scaled by the upstream gradient / n.
#include "common.cuh"

template <typename T, bool SQUARE>
__device__ void diff_partial_sums(const T* a, const T* b, T* partial, idx_t n) {
    extern __shared__ unsigned char smem_raw[];
    T* smem = reinterpret_cast<T*>(smem_raw);
    T acc = 0;
    MINISR_GRID_STRIDE(k, n) {
        T d = a[k] - b[k];
        acc += SQUARE ? d * d : (d < 0 ? -d : d);
    }
    smem[threadIdx.x] = acc;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) smem[threadIdx.x] += smem[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = smem[0];
}

#define INSTANTIATE(T, S)                                                                                      \
    extern "C" __global__ void sq_diff_partial_##S(const T* a, const T* b, T* partial, idx_t n) {             \
        diff_partial_sums<T, true>(a, b, partial, n);                                                          \
    }                                                                                                          \
    extern "C" __global__ void abs_diff_partial_##S(const T* a, const T* b, T* partial, idx_t n) {            \
        diff_partial_sums<T, false>(a, b, partial, n);                                                         \
    }                                                                                                          \
    extern "C" __global__ void diff_scaled_##S(const T* a, const T* b, T scale, T* out, idx_t n) {            \
        MINISR_GRID_STRIDE(k, n) { out[k] = (a[k] - b[k]) * scale; }                                           \
    }                                                                                                          \
    extern "C" __global__ void sign_diff_scaled_##S(const T* a, const T* b, T scale, T* out, idx_t n) {       \
        MINISR_GRID_STRIDE(k, n) {                                                                             \
            T d = a[k] - b[k];                                                                                 \
            out[k] = d > 0 ? scale : (d < 0 ? -scale : (T)0);                                                  \
        }                                                                                                      \
    }

INSTANTIATE(float, f32)
INSTANTIATE(double, f64)
