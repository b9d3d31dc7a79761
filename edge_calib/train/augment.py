"""Training augmentations for the frozen source model: ``--augment none|geometric|photometric|
both``. Geometric moves the content (classifiers: small rotations, scalings, shifts; a
segmenter always trains on scaled crops and flips, so it takes none or photometric).
Photometric changes the camera, not the scene: per image an exposure gain, gamma, contrast,
colour gains and, half the time, a Gaussian blur, with the label (or mask) left alone."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..core.augmentations import (AUGMENTATIONS, BLUR_PROBABILITY, BLUR_SIGMA, COLOUR,
                                  CONTRAST, GAIN, GAMMA)
from ..core.errors import EdgeCalibError
from ..core.spec import InputSpec

def random_affine(x: torch.Tensor, background: float, max_shift=0.1, max_rot_deg=10.0,
                  scale=(0.9, 1.1)) -> torch.Tensor:
    """Small random rotations, scalings and shifts (fractions of the image), background-filled."""
    b = x.shape[0]
    angle = (torch.rand(b) * 2 - 1) * math.radians(max_rot_deg)
    s = torch.empty(b).uniform_(*scale)
    shift = (torch.rand(b, 2) * 2 - 1) * max_shift * 2  # affine_grid coordinates span [-1, 1]
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1).to(x.device)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x - background, grid, align_corners=False, padding_mode="zeros") + background


def gaussian_blur(u: torch.Tensor, sigma: float) -> torch.Tensor:
    """u [C,H,W] convolved with a separable Gaussian of ``sigma`` px (radius 3 sigma, at least
    1), edges replicated."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=u.dtype, device=u.device)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    c = u.shape[0]
    v = F.pad(u[None], (radius, radius, radius, radius), mode="replicate")
    v = F.conv2d(v, k.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(v, k.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)[0]


def photometric_jitter(lo, hi):
    """A batch transform (x, y) -> (x', y): per image, in pixel units u in [0, 1],
    u' = clip(((clip(g u)^gamma - m) c + m) k) with gain g, gamma, contrast c about the image
    mean m and per-channel colour gains k drawn from the ranges of ``core.augmentations``, then a Gaussian blur
    with probability BLUR_PROBABILITY; y is returned untouched."""
    lo_t = torch.tensor(lo, dtype=torch.float32).reshape(1, -1, 1, 1)
    span = torch.tensor(hi, dtype=torch.float32).reshape(1, -1, 1, 1) - lo_t

    def transform(x: torch.Tensor, y: torch.Tensor):
        b, c = x.shape[:2]
        lo_x, span_x = lo_t.to(x.device), span.to(x.device)
        u = ((x - lo_x) / span_x).clamp(0, 1)
        draw = lambda rng, *shape: torch.empty(b, *shape, 1, 1, device=x.device).uniform_(*rng)  # noqa: E731
        u = (u * draw(GAIN, 1)).clamp(0, 1) ** draw(GAMMA, 1)
        mean = u.mean(dim=(1, 2, 3), keepdim=True)
        u = (((u - mean) * draw(CONTRAST, 1) + mean) * draw(COLOUR, c)).clamp(0, 1)
        blurred = torch.rand(b) < BLUR_PROBABILITY
        if blurred.any():
            u = torch.stack([gaussian_blur(u[i], float(torch.empty(()).uniform_(*BLUR_SIGMA)))
                             if blurred[i] else u[i] for i in range(b)])
        return u * span_x + lo_x, y

    return transform


def augmentation(kind: str, spec: InputSpec, task: str):
    """The batch transform (x, y) -> (x', y') for ``--augment kind`` before a segmenter's crops
    (None: nothing added). A segmenter refuses geometric and both: its scaled crops and flips
    are its geometric augmentation already."""
    if kind not in AUGMENTATIONS:
        raise EdgeCalibError(f"--augment {kind!r}: choose one of {', '.join(AUGMENTATIONS)}")
    if task == "segmentation" and kind in ("geometric", "both"):
        raise EdgeCalibError(f"--augment {kind}: a segmenter always trains on scaled crops and "
                             "flips; add photometric or none")
    steps = []
    if kind in ("geometric", "both"):
        steps.append(lambda x, y: (random_affine(x, background=spec.lo[0]), y))
    if kind in ("photometric", "both"):
        steps.append(photometric_jitter(spec.lo, spec.hi))
    if not steps:
        return None

    def transform(x, y):
        for step in steps:
            x, y = step(x, y)
        return x, y

    return transform
