"""The paper's calibrator: a ResNet generator (Johnson et al.), kept as the reference.

7x7 conv -> two stride-2 3x3 convs -> N residual blocks -> two stride-2 transposed convs ->
7x7 conv -> h; instance norm (no affine), reflection padding. Fully convolutional (inputs are
reflect-padded to a multiple of 4 and h cropped back). Its cost grows with the pixel count:
full-resolution 7x7 convolutions and 2N residual 3x3 convolutions at a quarter resolution.
Width 8 with 9 blocks is the paper's 0.18M (180,419 parameters); width 4 is 45,859.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .base import BoundedCalibrator, SizeKey, zero_init


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels),
            nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels))

    def forward(self, x):
        return x + self.body(x)


class ResnetCalibrator(BoundedCalibrator):
    arch = "resnet"
    SIZE = {"width": SizeKey(8, 1, "base channels (ngf)"),
            "blocks": SizeKey(9, 0, "residual blocks at a quarter resolution")}
    PRESETS = {"small": {"width": 4, "blocks": 1}, "medium": {"width": 8, "blocks": 3},
               "large": {"width": 8, "blocks": 9}}

    def build(self, channels: int, width: int, blocks: int) -> None:
        w = width
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(channels, w, 7), nn.InstanceNorm2d(w),
                  nn.ReLU(True),
                  nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.InstanceNorm2d(2 * w),
                  nn.ReLU(True),
                  nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.InstanceNorm2d(4 * w),
                  nn.ReLU(True)]
        layers += [ResidualBlock(4 * w) for _ in range(blocks)]
        layers += [nn.ConvTranspose2d(4 * w, 2 * w, 3, stride=2, padding=1, output_padding=1),
                   nn.InstanceNorm2d(2 * w), nn.ReLU(True),
                   nn.ConvTranspose2d(2 * w, w, 3, stride=2, padding=1, output_padding=1),
                   nn.InstanceNorm2d(w), nn.ReLU(True),
                   nn.ReflectionPad2d(3)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(w, channels, 7)
        if self.perturbation == "symmetric":
            zero_init(self.head)

    def raw(self, x):
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % 4, (-w) % 4
        xp = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect") if (pad_h or pad_w) else x
        return self.head(self.body(xp))[..., :h, :w]
