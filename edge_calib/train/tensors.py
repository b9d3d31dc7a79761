"""Datasets held in memory as uint8 at the classifier's input size, batched to torch on demand."""

from __future__ import annotations

import numpy as np
import torch

from ..core.errors import EdgeCalibError
from ..core.spec import InputSpec
from ..data import ImageSet, load_dataset


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; anything else as torch understands it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise EdgeCalibError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EdgeCalibError(f"device {name} asked for, but torch sees no CUDA GPU")
    return device


class DomainData:
    """One domain's images resized to ``spec`` (uint8, N,h,w,C) and labels (or None)."""

    def __init__(self, images: ImageSet, spec: InputSpec):
        self.name = images.name
        self.spec = spec
        self.images = spec.resize_uint8(images.images)
        self.labels = images.labels
        self.void = images.void
        self.classes = images.classes or (
            None if images.labels is None or images.labels.ndim != 1
            else tuple(str(i) for i in range(int(images.labels.max()) + 1)))

    def __len__(self):
        return len(self.images)

    def batch(self, index, device) -> torch.Tensor:
        index = np.asarray(index)
        return torch.from_numpy(self.spec.normalize(self.images[index])).to(device)

    def labels_of(self, index, device) -> torch.Tensor:
        if self.labels is None:
            raise EdgeCalibError(f"{self.name} has no labels")
        return torch.from_numpy(self.labels[np.asarray(index)]).to(device)

    def split(self, fraction: float, seed: int) -> tuple["DomainData", "DomainData | None"]:
        """(kept, held-out) by a seeded permutation; held-out is None when fraction is 0."""
        if fraction <= 0:
            return self, None
        if not 0 < fraction < 1:
            raise EdgeCalibError(f"held-out fraction must be in [0, 1), got {fraction}")
        perm = np.random.default_rng(seed).permutation(len(self))
        cut = len(self) - max(1, int(round(fraction * len(self))))
        return self._take(np.sort(perm[:cut])), self._take(np.sort(perm[cut:]))

    def _take(self, index) -> "DomainData":
        part = object.__new__(DomainData)
        part.name, part.spec, part.classes = self.name, self.spec, self.classes
        part.void = self.void
        part.images = self.images[index]
        part.labels = None if self.labels is None else self.labels[index]
        return part


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of one epoch: a permutation fixed by (seed, epoch), so runs resume
    bit-for-bit."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=gen)


def load_domain(name, split, root, spec: InputSpec, max_samples=None, seed=0,
                unlabelled=False) -> DomainData:
    """A dataset or folder split at ``spec``'s size, optionally subsampled; ``unlabelled``
    drops the labels (target domains are trained on without them) and reads a folder as a
    camera's frames, nested folders included."""
    ds = load_dataset(name, split, root, image_size=(spec.height, spec.width),
                      unlabelled=unlabelled)
    ds = ds.subset(max_samples, seed)
    if unlabelled:
        ds.labels = None
    return DomainData(ds, spec)
