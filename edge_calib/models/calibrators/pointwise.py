"""A per-domain colour mapping: the same small function of each pixel's colour, everywhere.

    h(x)[p] = W2 relu(W1 x[p] + b1) + b2      (hidden > 0: 1x1 convolutions)
    h(x)[p] = A x[p] + b                      (hidden = 0: a 3x3 colour matrix and a bias)

It corrects colour casts, contrast, gamma and tone curves (any smooth per-pixel map within
the eps bound) but cannot change shapes or textures. A handful of pointwise ONNX nodes; its
cost grows with the pixel count at (2 * hidden * C) MACs per pixel.
"""

from __future__ import annotations

from torch import nn

from .base import BoundedCalibrator, SizeKey, zero_init


class PointwiseCalibrator(BoundedCalibrator):
    arch = "pointwise"
    # Wide enough that Adam's per-parameter steps add up: at hidden 8 the first MNIST run was
    # step-limited (calibrator loss rising, mean |delta| 0.10 against 0.30 for the others).
    SIZE = {"hidden": SizeKey(32, 0, "hidden channels of the per-pixel MLP (0: linear)")}
    PRESETS = {"small": {"hidden": 16}, "medium": {"hidden": 32}, "large": {"hidden": 64}}

    def build(self, channels: int, hidden: int) -> None:
        if hidden == 0:
            self.net = zero_init(nn.Conv2d(channels, channels, 1))
        else:
            self.net = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(),
                                     zero_init(nn.Conv2d(hidden, channels, 1)))

    def raw(self, x):
        return self.net(x)
