"""A shallow full-resolution residual network: a few 3x3 convolutions, nothing else.

    h(x) = conv3x3(relu(... relu(conv3x3(x)) ...))     (depth hidden layers of ``width``)

No normalisation layers (nothing to fold at inference), zero padding (no Pad nodes). It can
sharpen, denoise and thicken strokes locally; its cost grows with the pixel count at
9 * width * (2C + (depth - 1) * width) MACs per pixel.
"""

from __future__ import annotations

from torch import nn

from .base import BoundedCalibrator, SizeKey, zero_init


class ShallowCalibrator(BoundedCalibrator):
    arch = "shallow"
    SIZE = {"width": SizeKey(8, 1, "channels of the hidden layers"),
            "depth": SizeKey(1, 1, "hidden 3x3 convolution layers")}
    PRESETS = {"small": {"width": 4, "depth": 1}, "medium": {"width": 8, "depth": 1},
               "large": {"width": 16, "depth": 2}}

    def build(self, channels: int, width: int, depth: int) -> None:
        self.net = conv_stack(channels, width, depth)

    def raw(self, x):
        return self.net(x)


def conv_stack(channels: int, width: int, depth: int) -> nn.Sequential:
    """conv3x3 (C -> width), ReLU, (depth - 1) x [conv3x3 (width -> width), ReLU], conv3x3
    (width -> C) zero-initialised; zero padding throughout."""
    layers = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
    layers.append(zero_init(nn.Conv2d(width, channels, 3, padding=1)))
    return nn.Sequential(*layers)
