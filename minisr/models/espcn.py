"""ESPCN (Shi et al. 2016, "Real-Time Single Image and Video Super-Resolution Using an Efficient Sub-Pixel
Convolutional Neural Network").

Works in LR space and enlarges at the end by a sub-pixel convolution (a conv to C r^2 channels + pixel shuffle):

    5x5, C -> 64       tanh
    3x3, 64 -> 32      tanh
    3x3, 32 -> C r^2   pixel shuffle (r = scale)

Input is the LR Y image in [0, 1] (``upsample_input`` False, as EDSR); the output is ``scale`` times larger. Every
conv pads to keep the size. Initialisation: N(0, 2 / (out_channels k^2)) for the first two layers, N(0, 0.001^2) for
the last (as yjn870/ESPCN-pytorch), biases 0.
"""

from __future__ import annotations

import math

from .. import nn


class ESPCN(nn.Module):
    def __init__(self, scale=3, features=(64, 32), kernels=(5, 3, 3), in_channels=1):
        super().__init__()
        if scale not in (2, 3, 4):
            raise ValueError(f"ESPCN scale must be 2, 3 or 4, got {scale}")
        if len(features) != 2 or len(kernels) != 3:
            raise ValueError(f"ESPCN needs 2 feature counts and 3 kernel sizes, got {features} and {kernels}")
        n1, n2 = (int(n) for n in features)
        k1, k2, k3 = (int(k) for k in kernels)
        self.config = dict(scale=scale, features=[n1, n2], kernels=[k1, k2, k3], in_channels=in_channels)

        def conv(cin, cout, k, std=None):
            std = math.sqrt(2.0 / (cout * k * k)) if std is None else std
            return nn.Conv2d(cin, cout, k, padding=k // 2, init="gaussian", std=std)

        self.conv1 = conv(in_channels, n1, k1)
        self.conv2 = conv(n1, n2, k2)
        self.conv3 = conv(n2, in_channels * scale * scale, k3, std=1e-3)
        self.tanh = nn.Tanh()
        self.shuffle = nn.PixelShuffle(scale)
        self.in_channels = in_channels
        self.border = 0
        self.upsample_input = False  # the input is the LR image itself
        self.scale = scale

    def forward(self, x):
        return self.shuffle(self.conv3(self.tanh(self.conv2(self.tanh(self.conv1(x))))))
