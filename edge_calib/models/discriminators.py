"""The two 4-way discriminators of the method (groups: 0 source, 1 target, 2 calibrated
source, 3 calibrated target)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NUM_GROUPS = 4


def shuffled_patches(x: torch.Tensor, patch: int, generator: torch.Generator | None = None):
    """One random ``patch x patch`` window per image, anywhere in the image, with its pixels
    permuted in space (one permutation per call, channels kept together); flattened to (B, -1).
    """
    b, c, h, w = x.shape
    patch = min(patch, h, w)
    dev = x.device
    top = torch.randint(0, h - patch + 1, (b,), generator=generator).to(dev)
    left = torch.randint(0, w - patch + 1, (b,), generator=generator).to(dev)
    offsets = torch.arange(patch, device=dev)
    rows = (top[:, None] + offsets)[:, :, None]  # (B, p, 1)
    cols = (left[:, None] + offsets)[:, None, :]  # (B, 1, p)
    batch = torch.arange(b, device=dev)[:, None, None]
    windows = x.permute(0, 2, 3, 1)[batch, rows, cols]  # (B, p, p, C)
    perm = torch.randperm(patch * patch, generator=generator).to(dev)
    return windows.reshape(b, patch * patch, c)[:, perm].reshape(b, -1)


class PixelDiscriminator(nn.Module):
    """Two-layer MLP over a randomly placed, spatially shuffled image patch -> 4 group logits."""

    def __init__(self, channels: int = 3, patch: int = 8, hidden: int = 256):
        super().__init__()
        self.patch = patch
        self.net = nn.Sequential(nn.Linear(channels * patch * patch, hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, NUM_GROUPS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(shuffled_patches(x, self.patch))


class FeatureDiscriminator(nn.Module):
    """MLP over the frozen classifier's softmax output, K -> 1000 -> 500 -> 4 (reference code).

    Dense outputs (B, K, H, W) are scored per pixel, on ``pixels`` random pixels of each image
    (a full 480x360 map would be 170k rows per image through the MLP).
    """

    def __init__(self, num_classes: int = 10, hidden: tuple[int, int] = (1000, 500),
                 pixels: int = 256):
        super().__init__()
        self.pixels = pixels
        self.net = nn.Sequential(nn.Linear(num_classes, hidden[0]), nn.ReLU(True),
                                 nn.Linear(hidden[0], hidden[1]), nn.ReLU(True),
                                 nn.Linear(hidden[1], NUM_GROUPS))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.dim() == 4:
            b, k, h, w = logits.shape
            flat = logits.reshape(b, k, h * w)
            if h * w > self.pixels:
                pick = torch.randint(h * w, (b, 1, self.pixels)).to(logits.device)
                flat = flat.gather(2, pick.expand(b, k, self.pixels))
            logits = flat.permute(0, 2, 1).reshape(-1, k)
        return self.net(F.softmax(logits, dim=1))
