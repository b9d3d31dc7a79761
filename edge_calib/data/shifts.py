"""Photometric domain shifts built from real digit images, deterministically.

``mnist:lowlight`` is MNIST as another camera would see it: each image rendered through a
fixed, seeded transform (the seed depends only on the dataset, shift and split, so every run
and every machine builds the same images). The shifts were fixed before any calibrator was
trained on them and are never tuned on results:

- ``colour``: a colour cast: dark-purple background and yellow strokes (per-image jitter);
- ``lowlight``: dusk: contrast 0.40, gamma 1.6, a floor of 15 grey levels, sensor noise;
- ``haze``: a bright veil: 45% image, 55% of a light grey, low contrast;
- ``blur``: defocus, a Gaussian of sigma 1.2 pixels (at the native size), and noise;
- ``texture``: MNIST-M's blend |background - digit| over random crops of real road frames
  (CamVid day training frames, needed under the data root).

The training split is drawn in a seeded random order, so a subset of it is not the same
images as the same-sized subset of the clean dataset.
"""

from __future__ import annotations

import zlib

import cv2
import numpy as np

from ..core.errors import EdgeCalibError

SHIFTS = ("colour", "lowlight", "haze", "blur", "texture")


def _rng(dataset: str, shift: str, split: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(f"{dataset}:{shift}:{split}".encode()))


def _grey(images: np.ndarray) -> np.ndarray:
    """uint8 (N,H,W[,C]) -> float32 (N,H,W) in [0, 1]."""
    x = images.astype(np.float32) / 255.0
    if x.ndim == 4:
        x = x.mean(axis=-1)
    return x


def _to_uint8_rgb(x: np.ndarray) -> np.ndarray:
    """float (N,H,W) or (N,H,W,3) in [0, 1] -> uint8 RGB (N,H,W,3) (grey rounded first, then
    repeated: the same values at a third of the cost)."""
    u = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(u[..., None], 3, axis=-1) if u.ndim == 3 else u


def colour(v, rng, chunk: int = 2048):
    """bg + v (fg - bg) per image, returned as uint8 RGB; computed in chunks of images (the
    same float64 arithmetic and values as in one piece, without GB-sized temporaries: the
    60,000 training digits took ~40 s, most of it allocating)."""
    n = len(v)
    background = np.array([60, 20, 90], np.float32) + rng.uniform(-15, 15, (n, 3))
    stroke = np.array([230, 180, 40], np.float32) + rng.uniform(-15, 15, (n, 3))
    bg, fg = background[:, None, None, :] / 255.0, stroke[:, None, None, :] / 255.0
    out = np.empty((*v.shape, 3), np.uint8)
    for i in range(0, n, chunk):
        part = slice(i, i + chunk)
        out[part] = _to_uint8_rgb(bg[part] + v[part, ..., None] * (fg[part] - bg[part]))
    return out


def lowlight(v, rng):
    return 15 / 255.0 + 0.40 * v ** 1.6 + rng.normal(0, 6 / 255.0, v.shape)


def haze(v, rng):
    veil = rng.uniform(190, 230, (len(v), 1, 1)) / 255.0
    return 0.45 * v + 0.55 * veil


def blur(v, rng):
    out = np.stack([cv2.GaussianBlur(img, (0, 0), 1.2) for img in v])
    return out + rng.normal(0, 12 / 255.0, v.shape)


def texture(v, rng, backgrounds: np.ndarray):
    """MNIST-M (Ganin et al. 2016): |crop - digit| per channel, crops of real frames."""
    n, h, w = v.shape
    fh, fw = backgrounds.shape[1:3]
    out = np.empty((n, h, w, 3), np.float32)
    for i in range(n):
        frame = backgrounds[rng.integers(len(backgrounds))]
        side = int(rng.uniform(0.15, 0.5) * fh)
        top, left = rng.integers(0, fh - side + 1), rng.integers(0, fw - side + 1)
        crop = cv2.resize(frame[top:top + side, left:left + side], (w, h),
                          interpolation=cv2.INTER_AREA)
        out[i] = np.abs(crop.astype(np.float32) / 255.0 - v[i][..., None])
    return out


def apply_shift(images: np.ndarray, labels: np.ndarray | None, dataset: str, shift: str,
                split: str, data_root=None) -> tuple[np.ndarray, np.ndarray | None]:
    """The shifted split: uint8 RGB images (N,H,W,3), in a seeded order, and their labels."""
    if shift not in SHIFTS:
        raise EdgeCalibError(f"unknown shift {shift!r} of {dataset}; choose one of "
                             f"{', '.join(SHIFTS)}")
    rng = _rng(dataset, shift, split)
    order = rng.permutation(len(images)) if split == "train" else np.arange(len(images))
    v = _grey(images[order])
    if shift == "texture":
        from .camvid import load_camvid

        if data_root is None:
            raise EdgeCalibError("the texture shift needs CamVid frames under the data root")
        backgrounds, _ = load_camvid(data_root, "train", "day", labelled=False)
        out = texture(v, rng, backgrounds)
    else:
        out = {"colour": colour, "lowlight": lowlight, "haze": haze, "blur": blur}[shift](v, rng)
    out = out if out.dtype == np.uint8 else _to_uint8_rgb(out)
    return out, None if labels is None else labels[order]
