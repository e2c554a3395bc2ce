"""FSRCNN (Dong, Loy and Tang 2016, "Accelerating the Super-Resolution Convolutional Neural Network").

Works in LR space and enlarges at the end with a learnt deconvolution:

    feature extraction  5x5, 1 -> d        PReLU
    shrinking           1x1, d -> s        PReLU
    mapping             m x (3x3, s -> s   PReLU)
    expanding           1x1, s -> d        PReLU
    deconvolution       9x9, d -> 1, stride = scale

Input is the LR Y image in [0, 1] (``upsample_input`` False, as EDSR); the output is ``scale`` times larger. Every
conv pads to keep the size; the deconvolution uses padding 4 and output_padding scale - 1, so the output is exactly
scale * (H, W), as in the common reimplementations (yjn870/FSRCNN-pytorch, OpenCV's dnn_superres models).

Initialisation as the paper: the convolutions from He et al.'s rule for PReLU, N(0, 2 / ((1 + a^2) fan_in)) with
the initial slope a = 0.25, biases 0; the deconvolution N(0, 0.001^2). The deconvolution's weight does not depend
on the scale (only its stride does), so a x2 model's weights load into a x3 or x4 model: the paper's transfer,
where only the deconvolution is then fine-tuned (``python -m minisr.train fsrcnn --scale 3 --init X2 --train-only
deconv``).
"""

from __future__ import annotations

import math

from .. import nn
from .. import random as mrandom

PRELU_INIT = 0.25


def _prelu_he_(conv: nn.Conv2d, slope: float = PRELU_INIT) -> nn.Conv2d:
    """He et al. (2015) initialisation for a conv followed by a PReLU of slope ``slope``, bias 0."""
    w = conv.weight.data
    fan_in = w.shape[1] * w.shape[2] * w.shape[3]
    std = math.sqrt(2.0 / ((1.0 + slope * slope) * fan_in))
    conv.weight.data[...] = mrandom.generator().normal(0.0, std, w.shape).astype(w.dtype)
    conv.bias.data[...] = 0
    return conv


class FSRCNN(nn.Module):
    def __init__(self, scale=2, d=56, s=12, m=4, in_channels=1):
        super().__init__()
        if scale not in (2, 3, 4):
            raise ValueError(f"FSRCNN scale must be 2, 3 or 4, got {scale}")
        if min(d, s) < 1 or m < 0:
            raise ValueError(f"FSRCNN needs d, s >= 1 and m >= 0, got d={d} s={s} m={m}")
        self.config = dict(scale=scale, d=d, s=s, m=m, in_channels=in_channels)

        def block(cin, cout, k):
            return nn.Sequential(_prelu_he_(nn.Conv2d(cin, cout, k, padding=k // 2)), nn.PReLU(cout, PRELU_INIT))

        self.extract = block(in_channels, d, 5)
        self.shrink = block(d, s, 1)
        self.mapping = nn.Sequential(*[block(s, s, 3) for _ in range(m)])
        self.expand = block(s, d, 1)
        self.deconv = nn.ConvTranspose2d(d, in_channels, 9, stride=scale, padding=4, output_padding=scale - 1,
                                         init="gaussian", std=1e-3)
        self.in_channels = in_channels
        self.border = 0
        self.upsample_input = False  # the input is the LR image itself
        self.scale = scale

    def forward(self, x):
        return self.deconv(self.expand(self.mapping(self.shrink(self.extract(x)))))
