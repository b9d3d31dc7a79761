"""One epoch of either training loop (the supervised loop and the calibrator trainer): each
data set's sample order (fixed by seed and epoch, so a resumed run continues bit for bit), the
global batches sharded over the ranks, the step, the per-step values averaged over the ranks,
the stop on a non-finite value, the progress bar, and the epoch's means and wall time. What a
step does (its objective) and what happens between epochs (evaluation, state, metrics) stays
with each trainer."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..core.progress import progress_bar
from .distributed import Distributed
from .loop import non_finite
from .tensors import epoch_order

Step = Callable[..., dict]  # (step, *indices: this rank's images of each set) -> logged values


@dataclass
class Epochs:
    """The epoch structure of a run: ``sizes[i]`` images drawn in their own order (seed
    ``seeds[i]``), ``steps`` global batches of ``batch`` an epoch, ``label`` on the bar; a
    non-finite value stops the run naming ``state_path`` (the last good state), what became
    non-finite (``what``) and the ``advice``."""

    sizes: tuple[int, ...]
    seeds: tuple[int, ...]
    batch: int
    steps: int
    epochs: int
    label: str
    state_path: Path | None
    what: str  # "loss", "losses"
    advice: str
    written: str = ""  # what else was not written, for the stop's message
    dist: Distributed = Distributed()

    def run(self, epoch: int, step: Step, progress: bool = True,
            shown: tuple[str, ...] = ()) -> tuple[dict, float]:
        """Epoch ``epoch`` (0-based): ``step`` on every batch, stopped by a non-finite value
        (``loop.non_finite``); the bar shows the values named in ``shown``. Returns (each
        value's mean over the steps, seconds)."""
        b, dist = self.batch, self.dist
        orders = [epoch_order(n, seed, epoch) for n, seed in zip(self.sizes, self.seeds)]
        sums: dict[str, float] = {}
        started = time.time()
        label = f"{self.label} {epoch + 1}/{self.epochs}"
        with progress_bar(self.steps, label, progress and dist.is_main) as bar:
            for s in range(self.steps):
                indices = [dist.shard(o[s * b:(s + 1) * b].numpy()) for o in orders]
                values = dist.average(step(s, *indices))
                bad = ", ".join(f"{k} {v:.3g}" for k, v in values.items()
                                if not math.isfinite(v))
                if bad:
                    raise non_finite(epoch, s, self.what, bad, self.state_path, self.advice,
                                     self.written)
                for key, value in values.items():
                    sums[key] = sums.get(key, 0.0) + value
                bar.update(1, current_item=" ".join(
                    f"{k} {values[k]:.3f}" for k in shown if k in values))
        return {k: v / self.steps for k, v in sums.items()}, time.time() - started

