"""VDSR (Kim et al. 2016): ``depth`` 3x3 convolutions with ``features`` channels, ReLU between, zero padding so the size
is kept, and a global residual: output = input + network(input). Input is the bicubic-upscaled Y image.
"""

from __future__ import annotations

from .. import nn


class VDSR(nn.Module):
    def __init__(self, depth=20, features=64, in_channels=1, residual=True, init="he"):
        super().__init__()
        if depth < 2:
            raise ValueError(f"VDSR depth must be >= 2, got {depth}")
        self.config = dict(depth=depth, features=features, in_channels=in_channels, residual=residual, init=init)
        layers = [nn.Conv2d(in_channels, features, 3, padding=1, init=init), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(features, features, 3, padding=1, init=init), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(features, in_channels, 3, padding=1, init=init))
        self.body = nn.Sequential(*layers)
        self.residual = residual
        self.in_channels = in_channels
        self.border = 0
        self.upsample_input = True
        self.scale = 1

    def forward(self, x):
        out = self.body(x)
        return out + x if self.residual else out
