"""The data calibrator G_c: a ResNet generator (Johnson et al.) with a bounded residual.

    G_c(x) = clamp(x + delta(x), lo, hi),   ||delta||_inf <= eps

7x7 conv -> two stride-2 3x3 convs -> N residual blocks -> two stride-2 transposed convs ->
7x7 conv -> bounded perturbation; instance norm (no affine), reflection padding. Fully
convolutional: any input size works (inputs are reflect-padded to a multiple of 4 and the
output cropped back), so a segmentation network fits behind it unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import EdgeCalibError

PERTURBATIONS = ("symmetric", "one-sided")


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels),
            nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels))

    def forward(self, x):
        return x + self.body(x)


class ResnetCalibrator(nn.Module):
    """Image-to-image calibrator with ``width`` (ngf) base channels and ``blocks`` residual blocks.

    ``perturbation="symmetric"`` (default): delta = eps * tanh(h), last conv zero-initialised,
    so an untrained calibrator is exactly the identity. ``"one-sided"`` reproduces the
    reference code: delta = clamp((tanh(h) + 1) / 2, 0, eps), which only brightens and starts
    near +min(0.5, eps) everywhere.
    """

    def __init__(self, channels: int = 3, width: int = 8, blocks: int = 9, eps: float = 0.4,
                 lo=-1.0, hi=1.0, perturbation: str = "symmetric"):
        super().__init__()
        if not eps > 0:
            raise EdgeCalibError(f"eps must be positive, got {eps}")
        if width < 1 or blocks < 0:
            raise EdgeCalibError(f"calibrator width must be >= 1 and blocks >= 0 "
                                 f"(got {width}, {blocks})")
        if perturbation not in PERTURBATIONS:
            raise EdgeCalibError(f"unknown perturbation {perturbation!r}; choose one of "
                                 f"{', '.join(PERTURBATIONS)}")
        self.eps, self.perturbation = float(eps), perturbation
        self.config = {"channels": channels, "width": width, "blocks": blocks, "eps": float(eps),
                       "perturbation": perturbation}
        w = width
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(channels, w, 7), nn.InstanceNorm2d(w),
                  nn.ReLU(True),
                  nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.InstanceNorm2d(2 * w), nn.ReLU(True),
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
        if perturbation == "symmetric":
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        lo_t = torch.as_tensor(lo, dtype=torch.float32).reshape(-1)
        hi_t = torch.as_tensor(hi, dtype=torch.float32).reshape(-1)
        self.register_buffer("lo", lo_t.reshape(1, -1, 1, 1), persistent=False)
        self.register_buffer("hi", hi_t.reshape(1, -1, 1, 1), persistent=False)

    def perturbation_of(self, x: torch.Tensor) -> torch.Tensor:
        """delta(x), before clamping x + delta to the input range."""
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % 4, (-w) % 4
        xp = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect") if (pad_h or pad_w) else x
        raw = torch.tanh(self.head(self.body(xp)))[..., :h, :w]
        if self.perturbation == "symmetric":
            return self.eps * raw
        return torch.clamp((raw + 1.0) / 2.0, 0.0, self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.minimum(torch.maximum(x + self.perturbation_of(x), self.lo), self.hi)
