"""SRResNet (Ledig et al. 2017, "Photo-Realistic Single Image Super-Resolution Using a GAN"), SRGAN's generator:

    head        9x9, 3 -> n, PReLU
    body        n_blocks x [3x3 - BN - PReLU - 3x3 - BN, + skip]
                3x3 - BN, + the head's output (the long skip)
    upsampler   per x2: 3x3, n -> 4n, pixel shuffle 2, PReLU  (x3: 3x3, n -> 9n, pixel shuffle 3, PReLU)
    tail        9x9, n -> 3

Input is the LR RGB image in [0, 1] and so is the output (no tanh: the paper's HR targets in [-1, 1] only rescale
the same network, and [0, 1] is what every other minisr model, the metrics and the upscaler use). ``upsample_input``
is False, as EDSR: the network enlarges by itself. BatchNorm uses batch statistics in ``train()`` and the running
ones in ``eval()``, so evaluate and upscale only after ``model.eval()`` (``models.load`` does it).
The PReLUs have one slope per channel (the paper does not say; per channel costs nothing), starting at 0.25.
"""

from __future__ import annotations

from .. import functional as F
from .. import nn


class ResidualBlock(nn.Module):
    def __init__(self, n_feats: int):
        super().__init__()
        self.conv1 = nn.Conv2d(n_feats, n_feats, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(n_feats)
        self.act = nn.PReLU(n_feats)
        self.conv2 = nn.Conv2d(n_feats, n_feats, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(n_feats)

    def forward(self, x):
        r = self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))
        return F.add(r, x, inplace=True)  # r is needed by nothing else: the sum takes its memory


def upsampler(scale: int, n_feats: int) -> nn.Sequential:
    """Sub-pixel stages: one per factor 2 (x2, x4, x8), or one x3."""
    if scale in (2, 4, 8):
        stages = [2] * {2: 1, 4: 2, 8: 3}[scale]
    elif scale == 3:
        stages = [3]
    else:
        raise ValueError(f"SRResNet scale must be 2, 3, 4 or 8, got {scale}")
    layers = []
    for r in stages:
        layers += [nn.Conv2d(n_feats, r * r * n_feats, 3, padding=1), nn.PixelShuffle(r), nn.PReLU(n_feats)]
    return nn.Sequential(*layers)


class SRResNet(nn.Module):
    def __init__(self, scale: int = 4, n_blocks: int = 16, n_feats: int = 64, n_colors: int = 3):
        super().__init__()
        if n_blocks < 0 or n_feats < 1 or n_colors < 1:
            raise ValueError(f"SRResNet needs n_blocks >= 0, n_feats >= 1 and n_colors >= 1, got n_blocks="
                             f"{n_blocks} n_feats={n_feats} n_colors={n_colors}")
        self.config = dict(scale=scale, n_blocks=n_blocks, n_feats=n_feats, n_colors=n_colors)
        self.head = nn.Sequential(nn.Conv2d(n_colors, n_feats, 9, padding=4), nn.PReLU(n_feats))
        self.body = nn.Sequential(*[ResidualBlock(n_feats) for _ in range(n_blocks)],
                                  nn.Conv2d(n_feats, n_feats, 3, padding=1), nn.BatchNorm2d(n_feats))
        self.upsample = upsampler(scale, n_feats)
        self.tail = nn.Conv2d(n_feats, n_colors, 9, padding=4)
        self.in_channels = n_colors
        self.border = 0
        self.upsample_input = False  # the input is the LR image itself
        self.scale = scale

    def forward(self, x):
        x = self.head(x)
        x = F.add(self.body(x), x, inplace=True)
        return self.tail(self.upsample(x))
