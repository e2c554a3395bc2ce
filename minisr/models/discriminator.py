"""SRGAN's discriminator (Ledig et al. 2017, Fig. 4): is this RGB image a real HR image or a generated one?

    conv 3x3, 3 -> n, LeakyReLU 0.2
    7 x [conv 3x3 (stride s) - BN - LeakyReLU 0.2]   channels n, 2n, 2n, 4n, 4n, 8n, 8n; strides 2, 1, 2, 1, 2, 1, 2
    global average pool -> dense 16n (1024 for n = 64) -> LeakyReLU 0.2 -> dense 1: one logit per image

The paper flattens the 6 x 6 x 512 features of a 96 x 96 crop into the first dense layer, which ties the network to
that size. Here a global average pool comes before it (``nn.AdaptiveAvgPool2d(1)``), so the discriminator takes any
input size (the strides need none: a stride-2 3x3 convolution with padding 1 gives ceil(H / 2)), and the first dense
layer has 8n inputs instead of 36 x 8n. The output is a logit: the sigmoid lives inside the loss
(``F.binary_cross_entropy_with_logits``), which is the stable form of -log D. Input: RGB in [0, 1], as the
generator's output and the HR targets.
"""

from __future__ import annotations

from .. import nn

STRIDES = (2, 1, 2, 1, 2, 1, 2)
WIDTHS = (1, 2, 2, 4, 4, 8, 8)  # x n_feats


class Discriminator(nn.Module):
    def __init__(self, n_feats: int = 64, n_colors: int = 3, fc: int | None = None, negative_slope: float = 0.2):
        super().__init__()
        if n_feats < 1 or n_colors < 1 or (fc is not None and fc < 1):
            raise ValueError(f"Discriminator needs n_feats, n_colors and fc >= 1, got n_feats={n_feats} "
                             f"n_colors={n_colors} fc={fc}")
        fc = 16 * n_feats if fc is None else int(fc)
        self.config = dict(n_feats=n_feats, n_colors=n_colors, fc=fc, negative_slope=negative_slope)
        layers = [nn.Conv2d(n_colors, n_feats, 3, padding=1), nn.LeakyReLU(negative_slope)]
        c = n_feats
        for w, s in zip(WIDTHS, STRIDES):
            layers += [nn.Conv2d(c, w * n_feats, 3, stride=s, padding=1), nn.BatchNorm2d(w * n_feats),
                       nn.LeakyReLU(negative_slope)]
            c = w * n_feats
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c, fc), nn.LeakyReLU(negative_slope),
                                        nn.Linear(fc, 1))
        self.in_channels = n_colors

    def forward(self, x):
        """(N, C, H, W) images -> (N, 1) logits (positive: "real")."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"Discriminator: expected (N, {self.in_channels}, H, W) images, got {x.shape}")
        return self.classifier(self.pool(self.features(x)))
