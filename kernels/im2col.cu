// im2col and col2im for conv2d (see minisr/backends/numpy_backend.py for the contracts).
//   cols[n, (c*kh + u)*kw + v, i*Wo + j] = x_padded[n, c, i*sh + u, j*sw + v]          shape (N, C*kh*kw, Ho*Wo)
// col2im is the adjoint, written as a gather: every input pixel sums the column entries that copied it, so each
// thread writes one dx element and no atomics are needed.
#include "common.cuh"

template <typename T>
__device__ void im2col(const T* x, T* cols, int N, int C, int H, int W, int kh, int kw, int sh, int sw, int ph,
                       int pw, int Ho, int Wo) {
    const idx_t P = (idx_t)Ho * Wo, K = (idx_t)C * kh * kw, total = (idx_t)N * K * P;
    MINISR_GRID_STRIDE(k, total) {
        idx_t p = k % P, row = (k / P) % K, n = k / (P * K);
        int i = (int)(p / Wo), j = (int)(p % Wo);
        int v = (int)(row % kw), u = (int)((row / kw) % kh), c = (int)(row / ((idx_t)kw * kh));
        int h = i * sh - ph + u, w = j * sw - pw + v;
        cols[k] = (h >= 0 && h < H && w >= 0 && w < W) ? x[((n * C + c) * H + h) * W + w] : (T)0;
    }
}

template <typename T>
__device__ void col2im(const T* cols, T* dx, int N, int C, int H, int W, int kh, int kw, int sh, int sw, int ph,
                       int pw, int Ho, int Wo) {
    const idx_t P = (idx_t)Ho * Wo, K = (idx_t)C * kh * kw, total = (idx_t)N * C * H * W;
    MINISR_GRID_STRIDE(k, total) {
        int w = (int)(k % W), h = (int)((k / W) % H), c = (int)((k / ((idx_t)W * H)) % C);
        idx_t n = k / ((idx_t)W * H * C);
        T acc = 0;
        for (int u = 0; u < kh; ++u) {
            int hi = h + ph - u;  // = i*sh for the output row i that read (h) through kernel row u
            if (hi < 0 || hi % sh) continue;
            int i = hi / sh;
            if (i >= Ho) continue;
            for (int v = 0; v < kw; ++v) {
                int wj = w + pw - v;
                if (wj < 0 || wj % sw) continue;
                int j = wj / sw;
                if (j >= Wo) continue;
                acc += cols[(n * K + ((idx_t)c * kh + u) * kw + v) * P + (idx_t)i * Wo + j];
            }
        }
        dx[k] = acc;
    }
}

#define INSTANTIATE(T, S)                                                                                           \
    extern "C" __global__ void im2col_##S(const T* x, T* cols, int N, int C, int H, int W, int kh, int kw, int sh, \
                                          int sw, int ph, int pw, int Ho, int Wo) {                                 \
        im2col<T>(x, cols, N, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo);                                             \
    }                                                                                                               \
    extern "C" __global__ void col2im_##S(const T* cols, T* dx, int N, int C, int H, int W, int kh, int kw, int sh, \
                                          int sw, int ph, int pw, int Ho, int Wo) {                                 \
        col2im<T>(cols, dx, N, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo);                                            \
    }

INSTANTIATE(float, f32)
INSTANTIATE(double, f64)
