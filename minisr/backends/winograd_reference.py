"""Winograd convolution F(m x m, r x r) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
2016), the readable NumPy version: the three small matrices of the paper and einsum, nothing else. The fast
version (the same math in chunks, on worker threads) is :mod:`minisr.backends.numba.winograd`; docs/backprop.md
explains why it is exact and where float32 loses bits.

One tile: an a x a patch d of the zero-padded input (a = m + r - 1) gives an m x m block of outputs of the r x r
correlation with the filter g as

    Y = A^T [ (G g G^T) * (B^T d B) ] A              (* elementwise, a x a numbers)

Over channels the elementwise product becomes, at each of the a^2 positions (x, y), a matrix product:
with U = G g G^T per (o, c) and V = B^T d B per (c, tile),

    M[x, y][o, tile] = sum_c U[x, y][o, c] V[x, y][c, tile]          (a^2 GEMMs)
    out tile          = A^T M A

F(2x2, 3x3) does 16 multiplies for 4 outputs where the direct sum does 36 (2.25x fewer); F(4x4, 3x3) 36 for 16
(4x fewer), with larger transform coefficients (more float32 rounding); F(2x2, 5x5) 36 for 4 where the direct
sum does 100 (2.8x fewer). F(4x4, 3x3) and F(2x2, 5x5) share their 6 points 0, +-1, +-2 and infinity, and with
them B^T: the same input transform serves both (the Numba kernels use that).

Gradients (g_out = dE/d(out)), both exact adjoints of the linear maps above:

* input: the forward with the filter flipped in both axes and its in/out channels swapped, padding r - 1 - p
  (the "full" correlation of g_out with the kernel, as for the direct convolution);
* weight: back through Y = A^T M A and M = U V: dM = A g_out_tile A^T, dU[x, y] = sum_tiles dM[x, y] V[x, y]^T,
  and dw = G^T dU G.
"""

from __future__ import annotations

import numpy as np

# F(2x2, 3x3): interpolation points 0, 1, -1 and infinity.
BT_2 = [[1, 0, -1, 0],
        [0, 1, 1, 0],
        [0, -1, 1, 0],
        [0, 1, 0, -1]]
G_2 = [[1, 0, 0],
       [1 / 2, 1 / 2, 1 / 2],
       [1 / 2, -1 / 2, 1 / 2],
       [0, 0, 1]]
AT_2 = [[1, 1, 1, 0],
        [0, 1, -1, -1]]

# F(4x4, 3x3): points 0, 1, -1, 2, -2 and infinity.
BT_4 = [[4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1]]
G_4 = [[1 / 4, 0, 0],
       [-1 / 6, -1 / 6, -1 / 6],
       [-1 / 6, 1 / 6, -1 / 6],
       [1 / 24, 1 / 12, 1 / 6],
       [1 / 24, -1 / 12, 1 / 6],
       [0, 0, 1]]
AT_4 = [[1, 1, 1, 1, 1, 0],
        [0, 1, -1, 2, -2, 0],
        [0, 1, 1, 4, 4, 0],
        [0, 1, -1, 8, -8, 1]]

# F(2x2, 5x5): F(4x4, 3x3)'s points, so its B^T; A^T's rows are the points' powers 0 and 1 (infinity: the last
# row's 1), G's rows the powers 0 .. 4 of each point over the product of its differences to the other four.
G_25 = [[1 / 4, 0, 0, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6, 1 / 3, 2 / 3],
        [1 / 24, -1 / 12, 1 / 6, -1 / 3, 2 / 3],
        [0, 0, 0, 0, 1]]
AT_25 = [[1, 1, 1, 1, 1, 0],
         [0, 1, -1, 2, -2, 1]]

#: (m, r) -> (B^T, G, A^T) of F(m x m, r x r)
MATRICES = {(2, 3): (BT_2, G_2, AT_2), (4, 3): (BT_4, G_4, AT_4), (2, 5): (BT_4, G_25, AT_25)}


def matrices(m: int, dtype, r: int = 3):
    """(B^T, G, A^T) of F(m x m, r x r) as arrays of this dtype."""
    if (m, r) not in MATRICES:
        raise ValueError(f"Winograd F({m}x{m}, {r}x{r}): (m, r) must be one of {sorted(MATRICES)}")
    return tuple(np.array(a, dtype=dtype) for a in MATRICES[m, r])


def _tiles(x, ph, pw, m, r, nth, ntw):
    """The a x a patches (a = m + r - 1) of x zero-padded by (ph, pw) (and at the far edges up to whole tiles),
    one per m x m output block: (N, C, nth, ntw, a, a)."""
    N, C, H, W = x.shape
    a = m + r - 1
    xp = np.zeros((N, C, nth * m + r - 1, ntw * m + r - 1), x.dtype)
    h, w = min(H, nth * m + r - 1 - ph), min(W, ntw * m + r - 1 - pw)
    xp[:, :, ph:ph + h, pw:pw + w] = x[:, :, :h, :w]
    d = np.empty((N, C, nth, ntw, a, a), x.dtype)
    for u in range(a):
        for v in range(a):
            d[..., u, v] = xp[:, :, u:u + nth * m:m, v:v + ntw * m:m]
    return d


def _grid(H, W, ph, pw, m, r):
    Ho, Wo = H + 2 * ph - r + 1, W + 2 * pw - r + 1
    return Ho, Wo, -(-Ho // m), -(-Wo // m)


def conv_forward(x, w, ph, pw, m=2):
    """out = conv2d(x, w) for an r x r filter (3 or 5), stride 1, padding (ph, pw): x (N, C, H, W), w (O, C, r, r)
    -> (N, O, Ho, Wo)."""
    r = w.shape[2]
    BT, G, AT = matrices(m, x.dtype, r)
    N, C, H, W = x.shape
    Ho, Wo, nth, ntw = _grid(H, W, ph, pw, m, r)
    V = BT @ _tiles(x, ph, pw, m, r, nth, ntw) @ BT.T  # B^T d B     (N, C, nth, ntw, a, a)
    U = G @ w @ G.T  # G g G^T                                   (O, C, a, a)
    M = np.einsum("ocxy,nctsxy->notsxy", U, V)  # the GEMMs over c, one per position (x, y)
    Y = AT @ M @ AT.T  # A^T M A                                 (N, O, nth, ntw, m, m)
    Y = Y.transpose(0, 1, 2, 4, 3, 5).reshape(N, w.shape[0], nth * m, ntw * m)
    return np.ascontiguousarray(Y[:, :, :Ho, :Wo])


def conv_input_grad(w, g, x_shape, ph, pw, m=2):
    """dx for out = conv2d(x, w (O, C, r, r), padding (ph, pw)), g = dE/d(out): the forward with w flipped and
    transposed, padding (r - 1 - ph, r - 1 - pw) (ph, pw < r)."""
    r = w.shape[2]
    if not (0 <= ph < r and 0 <= pw < r):
        raise ValueError(f"Winograd input gradient: padding {(ph, pw)} must be 0 .. {r - 1}")
    dx = conv_forward(g, np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)), r - 1 - ph, r - 1 - pw, m)
    assert dx.shape == tuple(x_shape)
    return dx


def conv_weight_grad(g, x, ph, pw, m=2):
    """dw (O, C, r, r) for out = conv2d(x, w, padding (ph, pw)), g = dE/d(out) (N, O, Ho, Wo) (r from the shapes)."""
    N, O, Ho, Wo = g.shape
    r = x.shape[2] + 2 * ph - Ho + 1
    BT, G, AT = matrices(m, x.dtype, r)
    _, _, nth, ntw = _grid(x.shape[2], x.shape[3], ph, pw, m, r)
    V = BT @ _tiles(x, ph, pw, m, r, nth, ntw) @ BT.T  # as in the forward
    gt = np.zeros((N, O, nth * m, ntw * m), g.dtype)  # g in whole tiles, 0 past the edges
    gt[:, :, :Ho, :Wo] = g
    gt = gt.reshape(N, O, nth, m, ntw, m).transpose(0, 1, 2, 4, 3, 5)
    dM = AT.T @ gt @ AT  # the adjoint of Y = A^T M A                (N, O, nth, ntw, a, a)
    dU = np.einsum("notsxy,nctsxy->ocxy", dM, V)  # the adjoint of M = U V: sums over images and tiles
    return G.T @ dU @ G  # the adjoint of U = G g G^T
