// Batch normalisation on x viewed as (N, C, P), element (n, c, p) at (n * C + c) * P + p:
//   stats:       mean[c] = sum x / n,  var[c] = sum (x - mean[c])^2 / n           (n = N * P, biased variance)
//   forward:     y = (x - mean[c]) * invstd[c] * weight[c] + bias[c]
//   sums:        db[c] = sum g,  dw[c] = invstd[c] * sum g (x - mean[c])           (= sum g xhat)
//   input_grad:  training: dx = weight[c] invstd[c] / n * (n g - db[c] - xhat dw[c]);  eval: dx = weight[c] invstd[c] g
// The per-channel sums are one block per channel with a shared-memory tree reduction in double (as bias_grad):
// deterministic.
#include "common.cuh"

// The block's threads' values summed; every thread gets the total. smem holds blockDim.x doubles.
__device__ double block_sum(double v, double* smem) {
    smem[threadIdx.x] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) smem[threadIdx.x] += smem[threadIdx.x + s];
        __syncthreads();
    }
    double total = smem[0];
    __syncthreads();  // (smem is reused by the next sum)
    return total;
}

template <typename T>
__device__ void batch_norm_stats(const T* x, T* mean, T* var, idx_t N, idx_t C, idx_t P) {
    extern __shared__ unsigned char smem_raw[];
    double* smem = reinterpret_cast<double*>(smem_raw);
    const idx_t c = blockIdx.x, n_all = N * P;
    double acc = 0;
    for (idx_t k = threadIdx.x; k < n_all; k += blockDim.x) acc += x[((k / P) * C + c) * P + k % P];
    const double m = block_sum(acc, smem) / n_all;
    acc = 0;
    for (idx_t k = threadIdx.x; k < n_all; k += blockDim.x) {
        double d = x[((k / P) * C + c) * P + k % P] - m;
        acc += d * d;
    }
    const double q = block_sum(acc, smem) / n_all;
    if (threadIdx.x == 0) {
        mean[c] = (T)m;
        var[c] = (T)q;
    }
}

template <typename T>
__device__ void batch_norm_forward(const T* x, const T* mean, const T* invstd, const T* weight, const T* bias, T* y,
                                   idx_t N, idx_t C, idx_t P) {
    MINISR_GRID_STRIDE(k, N * C * P) {
        idx_t c = (k / P) % C;
        y[k] = (x[k] - mean[c]) * invstd[c] * weight[c] + bias[c];
    }
}

template <typename T>
__device__ void batch_norm_sums(const T* g, const T* x, const T* mean, const T* invstd, T* db, T* dw, idx_t N,
                                idx_t C, idx_t P) {
    extern __shared__ unsigned char smem_raw[];
    double* smem = reinterpret_cast<double*>(smem_raw);
    const idx_t c = blockIdx.x, n_all = N * P;
    const double m = mean[c];
    double a = 0, b = 0;
    for (idx_t k = threadIdx.x; k < n_all; k += blockDim.x) {
        idx_t i = ((k / P) * C + c) * P + k % P;
        a += g[i];
        b += (double)g[i] * (x[i] - m);
    }
    a = block_sum(a, smem);
    b = block_sum(b, smem);
    if (threadIdx.x == 0) {
        db[c] = (T)a;
        dw[c] = (T)(b * invstd[c]);
    }
}

template <typename T>
__device__ void batch_norm_input_grad(const T* g, const T* x, const T* mean, const T* invstd, const T* weight,
                                      const T* db, const T* dw, int training, T* dx, idx_t N, idx_t C, idx_t P) {
    const T n_all = (T)(N * P);
    MINISR_GRID_STRIDE(k, N * C * P) {
        idx_t c = (k / P) % C;
        T scale = weight[c] * invstd[c];
        if (training) {
            T xhat = (x[k] - mean[c]) * invstd[c];
            dx[k] = scale / n_all * (n_all * g[k] - db[c] - xhat * dw[c]);
        } else {
            dx[k] = scale * g[k];
        }
    }
}

#define INSTANTIATE(T, S_)                                                                                          \
    extern "C" __global__ void batch_norm_stats_##S_(const T* x, T* mean, T* var, idx_t N, idx_t C, idx_t P) {     \
        batch_norm_stats<T>(x, mean, var, N, C, P);                                                                 \
    }                                                                                                               \
    extern "C" __global__ void batch_norm_forward_##S_(const T* x, const T* mean, const T* invstd, const T* weight, \
                                                       const T* bias, T* y, idx_t N, idx_t C, idx_t P) {            \
        batch_norm_forward<T>(x, mean, invstd, weight, bias, y, N, C, P);                                           \
    }                                                                                                               \
    extern "C" __global__ void batch_norm_sums_##S_(const T* g, const T* x, const T* mean, const T* invstd, T* db,  \
                                                    T* dw, idx_t N, idx_t C, idx_t P) {                             \
        batch_norm_sums<T>(g, x, mean, invstd, db, dw, N, C, P);                                                    \
    }                                                                                                               \
    extern "C" __global__ void batch_norm_input_grad_##S_(const T* g, const T* x, const T* mean, const T* invstd,   \
                                                          const T* weight, const T* db, const T* dw, int training,  \
                                                          T* dx, idx_t N, idx_t C, idx_t P) {                       \
        batch_norm_input_grad<T>(g, x, mean, invstd, weight, db, dw, training, dx, N, C, P);                        \
    }

INSTANTIATE(float, f32)
INSTANTIATE(double, f64)
