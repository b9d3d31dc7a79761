"""A low-resolution correction field: a small network at 1/factor of the input resolution,
its bounded output upsampled bilinearly and added.

    delta(x) = up(eps * tanh(net(avgpool_factor(x))))

Bilinear upsampling is a convex combination, so the bound holds at full resolution. It
corrects spatially varying illumination (vignetting, shadows, a lit sky) at 1/factor^2 of a
full-resolution network's cost; the per-pixel work left is one Resize and one Add.
"""

from __future__ import annotations

import torch.nn.functional as F

from .base import BoundedCalibrator, SizeKey
from .shallow import conv_stack


class LowResCalibrator(BoundedCalibrator):
    arch = "lowres"
    SIZE = {"factor": SizeKey(4, 2, "downsampling factor (average pooling)"),
            "width": SizeKey(16, 1, "channels of the hidden 3x3 convolutions"),
            "depth": SizeKey(2, 1, "hidden 3x3 convolution layers")}
    PRESETS = {"small": {"factor": 8, "width": 8, "depth": 1},
               "medium": {"factor": 4, "width": 16, "depth": 2},
               "large": {"factor": 2, "width": 16, "depth": 3}}

    def build(self, channels: int, factor: int, width: int, depth: int) -> None:
        self.factor = factor
        self.net = conv_stack(channels, width, depth)  # the shallow family's, at low resolution

    def perturbation_of(self, x):
        h, w = x.shape[-2:]
        k = max(1, min(self.factor, h, w))
        low = self.bound(self.net(F.avg_pool2d(x, k)))
        if int(h) % k == 0 and int(w) % k == 0:  # a constant scale: one Resize node, no Shape ops
            return F.interpolate(low, scale_factor=float(k), mode="bilinear", align_corners=False)
        return F.interpolate(low, size=(int(h), int(w)), mode="bilinear", align_corners=False)
