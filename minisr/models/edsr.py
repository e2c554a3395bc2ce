"""EDSR (Lim et al. 2017): head conv, ``n_resblocks`` residual blocks (conv-ReLU-conv, no batch norm, scaled by
``res_scale``), a body conv with the long skip, an upsampler (conv to 4n channels + pixel shuffle x2, once for x2, twice
for x4; conv to 9n + pixel shuffle x3 for x3) and a tail conv, between RGB mean subtraction and addition.
Input is the low-resolution RGB image in [0, 1]; the output is ``scale`` times larger. Baseline: 16 x 64, res_scale 1;
paper: 32 x 256, res_scale 0.1.
"""

from __future__ import annotations

import numpy as np

from .. import functional as F
from .. import nn
from ..tensor import Tensor

DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


class MeanShift(nn.Module):
    """x + sign * mean per channel, as a fixed 1x1 convolution (identity weight, bias = sign * mean)."""

    def __init__(self, mean=DIV2K_RGB_MEAN, sign=-1):
        super().__init__()
        c = len(mean)
        self.register_buffer("weight", Tensor(np.eye(c, dtype=np.float32).reshape(c, c, 1, 1)))
        self.register_buffer("bias", Tensor(sign * np.asarray(mean, dtype=np.float32)))

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias)


class ResBlock(nn.Module):
    def __init__(self, n_feats, res_scale=1.0):
        super().__init__()
        self.conv1 = nn.Conv2d(n_feats, n_feats, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(n_feats, n_feats, 3, padding=1)
        self.res_scale = res_scale

    def forward(self, x):
        r = self.conv2(nn.conv_relu(self.conv1, self.relu, x))
        if self.res_scale != 1:
            r = r * self.res_scale
        return F.add(r, x, inplace=True)  # r is needed by nothing else: the sum takes its memory


class Upsampler(nn.Sequential):
    def __init__(self, scale, n_feats):
        if scale in (2, 4, 8):
            layers = []
            for _ in range({2: 1, 4: 2, 8: 3}[scale]):
                layers += [nn.Conv2d(n_feats, 4 * n_feats, 3, padding=1), nn.PixelShuffle(2)]
        elif scale == 3:
            layers = [nn.Conv2d(n_feats, 9 * n_feats, 3, padding=1), nn.PixelShuffle(3)]
        else:
            raise ValueError(f"EDSR scale must be 2, 3, 4 or 8, got {scale}")
        super().__init__(*layers)


class EDSR(nn.Module):
    def __init__(self, scale=2, n_resblocks=16, n_feats=64, res_scale=1.0, n_colors=3):
        super().__init__()
        self.config = dict(scale=scale, n_resblocks=n_resblocks, n_feats=n_feats, res_scale=res_scale,
                           n_colors=n_colors)
        mean = DIV2K_RGB_MEAN if n_colors == 3 else (0.5,) * n_colors
        self.sub_mean = MeanShift(mean, -1)
        self.head = nn.Conv2d(n_colors, n_feats, 3, padding=1)
        self.body = nn.Sequential(*[ResBlock(n_feats, res_scale) for _ in range(n_resblocks)],
                                  nn.Conv2d(n_feats, n_feats, 3, padding=1))
        self.tail = nn.Sequential(Upsampler(scale, n_feats), nn.Conv2d(n_feats, n_colors, 3, padding=1))
        self.add_mean = MeanShift(mean, +1)
        self.in_channels = n_colors
        self.border = 0
        self.upsample_input = False  # the input is the LR image itself
        self.scale = scale

    def forward(self, x):
        x = self.head(self.sub_mean(x))
        x = F.add(self.body(x), x, inplace=True)
        return self.add_mean(self.tail(x))
