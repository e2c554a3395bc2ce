// Pixel shuffle (N, C*r*r, H, W) -> (N, C, H*r, W*r), PyTorch's channel order:
//   y[n, c, h*r + i, w*r + j] = x[n, c*r*r + i*r + j, h, w]
// and its backward, the inverse permutation. One thread per element of the large (shuffled) array.
#include "common.cuh"

template <typename T>
__device__ void shuffle(T* x, T* y, idx_t N, idx_t C, idx_t H, idx_t W, int r, bool forward) {
    const idx_t Hr = H * r, Wr = W * r;
    MINISR_GRID_STRIDE(k, N * C * Hr * Wr) {
        idx_t wr = k % Wr, hr = (k / Wr) % Hr, c = (k / (Wr * Hr)) % C, n = k / (Wr * Hr * C);
        idx_t h = hr / r, i = hr % r, w = wr / r, j = wr % r;
        idx_t src = ((n * C * r * r + c * r * r + i * r + j) * H + h) * W + w;
        if (forward) y[k] = x[src]; else x[src] = y[k];
    }
}

#define INSTANTIATE(T, S)                                                                                        \
    extern "C" __global__ void pixel_shuffle_forward_##S(T* x, T* y, idx_t N, idx_t C, idx_t H, idx_t W, int r) { \
        shuffle<T>(x, y, N, C, H, W, r, true);                                                                   \
    }                                                                                                            \
    extern "C" __global__ void pixel_shuffle_backward_##S(T* dx, T* g, idx_t N, idx_t C, idx_t H, idx_t W, int r) { \
        shuffle<T>(dx, g, N, C, H, W, r, false);                                                                 \
    }

INSTANTIATE(float, f32)
INSTANTIATE(double, f64)
