"""SRCNN (Dong et al. 2014/2016): patch extraction f1 x f1, non-linear mapping f2 x f2, reconstruction f3 x f3.

Input is the bicubic-upscaled image (Y, or RGB with ``in_channels=3``); the output has the same scale. With
``padding="valid"`` (the paper) each convolution shrinks the image, so the output is the centre of the input, smaller by
``border`` pixels on every side and the loss compares only that valid centre; ``"same"`` pads each layer by k // 2.
"""

from __future__ import annotations

from .. import nn


class SRCNN(nn.Module):
    def __init__(self, kernels=(9, 5, 5), features=(64, 32), padding="valid", in_channels=1, init="default"):
        super().__init__()
        if len(kernels) != 3 or len(features) != 2:
            raise ValueError(f"SRCNN needs 3 kernel sizes and 2 feature counts, got {kernels} and {features}")
        if padding not in ("valid", "same"):
            raise ValueError(f"SRCNN padding must be 'valid' or 'same', got {padding!r}")
        f1, f2, f3 = (int(k) for k in kernels)
        if any(k < 1 or k % 2 == 0 for k in (f1, f2, f3)):  # (the border and the centring assume odd kernels)
            raise ValueError(f"SRCNN kernel sizes must be odd (>= 1) so the output stays centred on the input "
                             f"pixels, got {tuple(kernels)}")
        n1, n2 = (int(n) for n in features)
        self.config = dict(kernels=[f1, f2, f3], features=[n1, n2], padding=padding, in_channels=in_channels,
                           init=init)
        pad = (lambda k: k // 2) if padding == "same" else (lambda k: 0)
        kw = dict(init=init, std=1e-3) if init == "gaussian" else dict(init=init)
        self.conv1 = nn.Conv2d(in_channels, n1, f1, padding=pad(f1), **kw)
        self.conv2 = nn.Conv2d(n1, n2, f2, padding=pad(f2), **kw)
        self.conv3 = nn.Conv2d(n2, in_channels, f3, padding=pad(f3), **kw)
        self.relu = nn.ReLU(inplace=True)
        self.in_channels = in_channels
        #: pixels lost on each side of the input with valid padding (8 for 9-5-5, 6 for 9-1-5)
        self.border = 0 if padding == "same" else (f1 - 1) // 2 + (f2 - 1) // 2 + (f3 - 1) // 2
        self.upsample_input = True  # the input is the bicubic-upscaled image
        self.scale = 1

    def forward(self, x):
        return self.conv3(nn.conv_relu(self.conv2, self.relu, nn.conv_relu(self.conv1, self.relu, x)))
