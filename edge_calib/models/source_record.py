"""A frozen model's recorded source statistics as one typed record (``train.source_stats``
records them): what a classifier checkpoint keeps beside its weights, outside its fingerprint,
and what a bundle's ``source/stats.npz`` holds. The checkpoint keeps ``meta()`` with the
metadata and ``tensors()`` with the weights; ``from_saved`` reads both back."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.errors import EdgeCalibError


@dataclass
class SourceStats:
    """The record: ``means[i]``, ``variances[i]`` per tap; ``class_marginal`` (K,);
    ``pixel_quantiles`` (C, QUANTILES + 1); the data it came from."""

    means: list[torch.Tensor]
    variances: list[torch.Tensor]
    class_marginal: torch.Tensor
    pixel_quantiles: torch.Tensor
    dataset: str
    images: int

    def tensors(self) -> dict:
        out = {"class_marginal": self.class_marginal, "pixel_quantiles": self.pixel_quantiles}
        for i, (m, v) in enumerate(zip(self.means, self.variances)):
            out[f"tap{i}.mean"], out[f"tap{i}.var"] = m, v
        return out

    def meta(self) -> dict:
        return {"dataset": self.dataset, "images": self.images, "taps": len(self.means),
                "channels": [int(m.numel()) for m in self.means]}

    @classmethod
    def from_saved(cls, meta: dict, tensors: dict, where: str = "the model") -> "SourceStats":
        """From ``meta()`` and ``tensors()`` as saved; malformed is one line naming ``where``."""
        try:
            n = int(meta["taps"])
            return cls([tensors[f"tap{i}.mean"] for i in range(n)],
                       [tensors[f"tap{i}.var"] for i in range(n)], tensors["class_marginal"],
                       tensors["pixel_quantiles"], str(meta["dataset"]), int(meta["images"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise EdgeCalibError(f"{where}: the stored source statistics are malformed "
                                 f"({exc!r})") from None

    def check_fits(self, moments: list[tuple[torch.Tensor, torch.Tensor]], what: str) -> None:
        """The model's taps now (``moments``) must be the recorded ones, channel for channel."""
        have = [int(m.numel()) for m, _ in moments]
        want = [int(m.numel()) for m in self.means]
        if have != want:
            raise EdgeCalibError(f"{what}: the model's layers ({len(have)} taps) do not match its "
                                 f"recorded source statistics ({len(want)} taps); record them "
                                 "again")
