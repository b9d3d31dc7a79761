"""The frozen model's own statistics on its source domain, recorded once and kept with it.

What a calibrator can be trained to restore without labels and without a discriminator (Hou &
Zheng 2020; VPTTA, CVPR 2024; ActMAD, CVPR 2023): on calibrated target frames, the frozen
model's activations should look as they do on source frames. The record holds, for the model
exactly as it is stored (float, or folded, pruned and INT8: measured on that model, so nothing
is lost when compression folds BatchNorm away):

- per *tap* (the input of each Conv / Linear layer after the first, in execution order: the
  same layers in the float, folded and INT8 forms of a network, and an imported graph's
  Conv / Gemm / MatMul inputs), the per-channel mean and variance over source images (and
  positions);
- the class marginal: the mean softmax over source images (and pixels);
- the source pixels' quantile function per channel (normalised input units), which the
  ``curve`` calibrator and the deployable histogram matching use.

Taps whose input is 1x1 in space (squeeze-excite and pooled branches) are left out: their
statistics over a batch of a few frames are too noisy to match.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import EdgeCalibError
from ..models.calibrators.curve import QUANTILES
from ..models.source_record import SourceStats
from .tensors import DomainData

VARIANCE_FLOOR = 1e-5


def tapped_layers(module: nn.Module) -> list[nn.Module]:
    """The layers whose inputs are recorded: every Conv2d / Linear and fake-quantised twin."""
    from ..models.int8 import QuantLayer

    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear, QuantLayer))]


def _is_pooled(x) -> bool:
    """A layer input 1x1 in space (squeeze-excite, pooled branches): not tapped."""
    return x.ndim == 4 and tuple(x.shape[-2:]) == (1, 1)


@contextmanager
def activation_taps(module: nn.Module):
    """Within the block, every forward of ``module`` appends the inputs of its tapped layers, in
    execution order, to the yielded list (with their gradients); the first input (the image) is
    skipped, as are inputs 1x1 in space."""
    recorded: list[torch.Tensor] = []

    def keep(x: torch.Tensor) -> None:
        if not _is_pooled(x):
            recorded.append(x)

    from ..models.onnx_import import OnnxModule

    if isinstance(module, OnnxModule):
        module.tap = keep
        try:
            yield recorded
        finally:
            module.tap = None
        return
    handles = [m.register_forward_pre_hook(lambda _m, args: keep(args[0]))
               for m in tapped_layers(module)]
    try:
        yield recorded
    finally:
        for h in handles:
            h.remove()


def tap_moments(values: list[torch.Tensor], mean_over_ranks: Callable | None = None
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per tap (mean, variance) per channel, over the batch (and positions), skipping the image.
    With ``mean_over_ranks`` (data-parallel training, equal shards) over the whole global batch:
    mu = mean_r(E_r[v]), s2 = mean_r(E_r[v^2]) - mu^2."""
    out = []
    for v in values[1:]:
        dims = (0,) if v.dim() == 2 else (0, *range(2, v.dim()))
        if mean_over_ranks is None:
            out.append((v.mean(dim=dims), v.var(dim=dims, unbiased=False)))
        else:
            mu = mean_over_ranks(v.mean(dim=dims))
            out.append((mu, (mean_over_ranks((v * v).mean(dim=dims)) - mu * mu).clamp(min=0)))
    return out


def pixel_quantiles(data: DomainData) -> torch.Tensor:
    """(C, QUANTILES + 1): per channel, the smallest normalised level whose share of source
    pixels at or below it reaches j / QUANTILES (the discrete quantile of the 8-bit pixels)."""
    spec = data.spec
    images = data.images[..., ::-1] if spec.colour_order == "BGR" and spec.channels == 3 \
        else data.images
    probs = np.arange(QUANTILES + 1) / QUANTILES
    rows = []
    for c in range(spec.channels):
        hist = np.bincount(images[..., c].ravel(), minlength=256).astype(np.float64)
        cdf = np.cumsum(hist) / hist.sum()
        levels = np.searchsorted(cdf, np.maximum(probs, 1e-12) - 1e-12).clip(0, 255)
        rows.append((levels / 255.0 - spec.mean[c]) / spec.std[c])
    return torch.tensor(np.array(rows), dtype=torch.float32)


class PooledMoments:
    """Per-tap channel means and variances pooled exactly over many batches (float64 sums),
    and the mean softmax."""

    def __init__(self):
        self.sums, self.squares, self.counts = None, None, None
        self.marginal, self.pixels = None, 0

    def add(self, taps: list[torch.Tensor], logits: torch.Tensor) -> None:
        taps = taps[1:]  # the first is the image
        if self.sums is None:
            self.sums = [torch.zeros(v.shape[1], dtype=torch.float64) for v in taps]
            self.squares = [torch.zeros_like(s) for s in self.sums]
            self.counts = [0] * len(taps)
        elif len(taps) != len(self.sums):
            raise EdgeCalibError("the model taps a different number of layers from one batch "
                                 "to the next")
        for i, v in enumerate(taps):
            flat = v.detach().transpose(0, 1).reshape(v.shape[1], -1).double().cpu()
            self.sums[i] += flat.sum(1)
            self.squares[i] += (flat * flat).sum(1)
            self.counts[i] += flat.shape[1]
        p = F.softmax(logits.detach().double(), dim=1)
        p = p.transpose(0, 1).reshape(p.shape[1], -1).cpu()
        self.marginal = p.sum(1) if self.marginal is None else self.marginal + p.sum(1)
        self.pixels += p.shape[1]

    def moments(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [((s / n).float(), (q / n - (s / n) ** 2).clamp(min=0).float())
                for s, q, n in zip(self.sums, self.squares, self.counts)]

    def class_marginal(self) -> torch.Tensor:
        return (self.marginal / self.pixels).float()


@torch.no_grad()
def pooled_moments(module: nn.Module, data: DomainData, calibrator: nn.Module | None = None,
                   index=None, batch_size: int = 8, device="cpu",
                   graph: bytes | None = None) -> PooledMoments:
    """The frozen ``module``'s tap moments over ``data`` (its ``index`` subset), with
    ``calibrator`` in front when given. ``graph``: an imported module's ONNX file, whose taps
    ONNX Runtime then computes (the same tensors, faster; no calibrator)."""
    module = module.eval()
    index = np.arange(len(data)) if index is None else np.asarray(index)
    pooled = PooledMoments()
    runner = None
    if graph is not None and calibrator is None:
        from ..models.onnx_taps import OnnxTaps

        runner = OnnxTaps(graph, module)
    for start in range(0, len(index), batch_size):
        x = data.batch(index[start:start + batch_size], device)
        if runner is not None:
            taps, logits = runner.run(x.cpu().numpy())
            pooled.add([torch.from_numpy(v) for v in taps if not _is_pooled(v)],
                       torch.from_numpy(logits))
            continue
        if calibrator is not None:
            x = calibrator(x)
        with activation_taps(module) as values:
            logits = module(x)
        pooled.add(values, logits)
    return pooled


def record_source_stats(module: nn.Module, data: DomainData, batch_size: int = 8,
                        max_images: int = 2048, seed: int = 0, device="cpu",
                        graph: bytes | None = None) -> SourceStats:
    """Run the frozen ``module`` (eval mode) over up to ``max_images`` source images and record
    its statistics (pooled exactly over all of them); ``graph``: the imported module's ONNX
    file, run by ONNX Runtime instead (``pooled_moments``)."""
    if len(data) == 0:
        raise EdgeCalibError(f"{data.name}: no images to record source statistics from")
    index = np.sort(np.random.default_rng(seed).permutation(len(data))[:max_images])
    pooled = pooled_moments(module, data, None, index, batch_size, device, graph)
    moments = pooled.moments()
    return SourceStats([m for m, _ in moments], [v for _, v in moments], pooled.class_marginal(),
                       pixel_quantiles(data), data.name, len(index))


def stats_distance(module: nn.Module, data: DomainData, stats: SourceStats,
                   calibrator: nn.Module | None = None, batch_size: int = 8,
                   device="cpu") -> float:
    """The unlabelled criterion: ``SourceStatsLoss`` between the frozen model's tap moments on
    (calibrated) ``data``, pooled over all its images, and the recorded source ones."""
    from .losses import SourceStatsLoss

    moments = pooled_moments(module, data, calibrator, None, batch_size, device).moments()
    stats.check_fits(moments, data.name)
    return float(SourceStatsLoss(stats.means, stats.variances)(moments))
