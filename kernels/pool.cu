// Max and average pooling over kh x kw windows, stride (sh, sw), padding (ph, pw), NCHW:
//   window (i, j) covers input rows i*sh - ph + u (u < kh) and columns j*sw - pw + v (v < kw).
// Forward kernels: one thread per output element. Backward kernels: one thread per input element, which gathers
// from the windows that hold it (no atomics): windows i with i*sh - ph <= h < i*sh - ph + kh.
#include "common.cuh"

// First window index i whose window reaches row h: ceil((h + ph - kh + 1) / sh), at least 0 (C division truncates
// toward zero, so negative numerators are handled apart).
__device__ inline idx_t first_window(idx_t h, int k, int s, int p) {
    idx_t a = h + p - k + 1;
    return a <= 0 ? 0 : (a + s - 1) / s;
}

__device__ inline idx_t last_window(idx_t h, int s, int p, idx_t n_out) {
    idx_t b = (h + p) / s;  // h + p >= 0
    return b < n_out - 1 ? b : n_out - 1;
}

__device__ inline int avg_divisor(idx_t i, idx_t j, idx_t H, idx_t W, int kh, int kw, int sh, int sw, int ph, int pw,
                                  int count_include_pad) {
    if (count_include_pad) return kh * kw;
    idx_t h0 = i * sh - ph, w0 = j * sw - pw;
    idx_t h1 = h0 + kh < H ? h0 + kh : H, w1 = w0 + kw < W ? w0 + kw : W;
    return (int)((h1 - (h0 > 0 ? h0 : 0)) * (w1 - (w0 > 0 ? w0 : 0)));
}

// idx[n, c, i, j] = h*W + w of the first largest value of window (i, j); padding never wins.
template <typename T>
__device__ void maxpool_argmax(const T* x, long long* idx, idx_t N, idx_t C, idx_t H, idx_t W, int kh, int kw, int sh,
                               int sw, int ph, int pw, idx_t Ho, idx_t Wo) {
    MINISR_GRID_STRIDE(k, N * C * Ho * Wo) {
        idx_t j = k % Wo, i = (k / Wo) % Ho, plane = k / (Wo * Ho);
        const T* xc = x + plane * H * W;
        idx_t h0 = i * sh - ph, w0 = j * sw - pw, where = -1;
        T best = 0;
        for (int u = 0; u < kh; ++u) {
            idx_t h = h0 + u;
            if (h < 0 || h >= H) continue;
            for (int v = 0; v < kw; ++v) {
                idx_t w = w0 + v;
                if (w < 0 || w >= W) continue;
                T val = xc[h * W + w];
                if (where < 0 || val > best) { best = val; where = h * W + w; }
            }
        }
        idx[k] = where;
    }
}

// dx[n, c, h, w] = sum of g[n, c, i, j] over the windows (i, j) whose arg-max is (h, w).
template <typename T>
__device__ void maxpool_backward(const T* g, const long long* idx, T* dx, idx_t N, idx_t C, idx_t H, idx_t W, int kh,
                                 int kw, int sh, int sw, int ph, int pw, idx_t Ho, idx_t Wo) {
    MINISR_GRID_STRIDE(k, N * C * H * W) {
        idx_t w = k % W, h = (k / W) % H, plane = k / (W * H), self = h * W + w;
        idx_t i0 = first_window(h, kh, sh, ph), i1 = last_window(h, sh, ph, Ho);
        idx_t j0 = first_window(w, kw, sw, pw), j1 = last_window(w, sw, pw, Wo);
        T s = 0;
        for (idx_t i = i0; i <= i1; ++i)
            for (idx_t j = j0; j <= j1; ++j) {
                idx_t o = (plane * Ho + i) * Wo + j;
                if (idx[o] == self) s += g[o];
            }
        dx[k] = s;
    }
}

// y[n, c, i, j] = sum of window (i, j) (zero padding) / divisor.
template <typename T>
__device__ void avgpool_forward(const T* x, T* y, idx_t N, idx_t C, idx_t H, idx_t W, int kh, int kw, int sh, int sw,
                                int ph, int pw, idx_t Ho, idx_t Wo, int count_include_pad) {
    MINISR_GRID_STRIDE(k, N * C * Ho * Wo) {
        idx_t j = k % Wo, i = (k / Wo) % Ho, plane = k / (Wo * Ho);
        const T* xc = x + plane * H * W;
        idx_t h0 = i * sh - ph, w0 = j * sw - pw;
        idx_t ha = h0 > 0 ? h0 : 0, hb = h0 + kh < H ? h0 + kh : H;
        idx_t wa = w0 > 0 ? w0 : 0, wb = w0 + kw < W ? w0 + kw : W;
        T s = 0;
        for (idx_t h = ha; h < hb; ++h)
            for (idx_t w = wa; w < wb; ++w) s += xc[h * W + w];
        y[k] = s / (T)avg_divisor(i, j, H, W, kh, kw, sh, sw, ph, pw, count_include_pad);
    }
}

// dx[n, c, h, w] = sum over the windows (i, j) holding (h, w) of g[n, c, i, j] / divisor(i, j).
template <typename T>
__device__ void avgpool_backward(const T* g, T* dx, idx_t N, idx_t C, idx_t H, idx_t W, int kh, int kw, int sh, int sw,
                                 int ph, int pw, idx_t Ho, idx_t Wo, int count_include_pad) {
    MINISR_GRID_STRIDE(k, N * C * H * W) {
        idx_t w = k % W, h = (k / W) % H, plane = k / (W * H);
        idx_t i0 = first_window(h, kh, sh, ph), i1 = last_window(h, sh, ph, Ho);
        idx_t j0 = first_window(w, kw, sw, pw), j1 = last_window(w, sw, pw, Wo);
        T s = 0;
        for (idx_t i = i0; i <= i1; ++i)
            for (idx_t j = j0; j <= j1; ++j)
                s += g[(plane * Ho + i) * Wo + j] / (T)avg_divisor(i, j, H, W, kh, kw, sh, sw, ph, pw, count_include_pad);
        dx[k] = s;
    }
}

#define POOL_DIMS idx_t N, idx_t C, idx_t H, idx_t W, int kh, int kw, int sh, int sw, int ph, int pw, idx_t Ho, idx_t Wo
#define POOL_ARGS N, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo

#define INSTANTIATE(T, S)                                                                                        \
    extern "C" __global__ void maxpool2d_argmax_##S(const T* x, long long* idx, POOL_DIMS) {                    \
        maxpool_argmax<T>(x, idx, POOL_ARGS);                                                                    \
    }                                                                                                            \
    extern "C" __global__ void maxpool2d_backward_##S(const T* g, const long long* idx, T* dx, POOL_DIMS) {     \
        maxpool_backward<T>(g, idx, dx, POOL_ARGS);                                                              \
    }                                                                                                            \
    extern "C" __global__ void avgpool2d_forward_##S(const T* x, T* y, POOL_DIMS, int count_include_pad) {      \
        avgpool_forward<T>(x, y, POOL_ARGS, count_include_pad);                                                  \
    }                                                                                                            \
    extern "C" __global__ void avgpool2d_backward_##S(const T* g, T* dx, POOL_DIMS, int count_include_pad) {    \
        avgpool_backward<T>(g, dx, POOL_ARGS, count_include_pad);                                                \
    }

INSTANTIATE(float, f32)
INSTANTIATE(double, f64)
