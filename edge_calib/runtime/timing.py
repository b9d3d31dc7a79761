"""Per-stage timing of the stream: capture / pre / auto (the ``--domain auto`` vote) /
calibrator / classifier / network / post / total, in constant memory however long the stream
runs."""

from __future__ import annotations

import collections
import time

import numpy as np

from ..core.stats import PERCENTILES, table

STAGES = ("capture", "pre", "auto", "calibrator", "classifier", "network", "post", "total")
WINDOW = 4096


class StageTimes:
    """Count, mean, min and max over every frame; median and percentiles over the last
    ``window`` frames (a ring buffer: a stream that runs for months keeps a fixed size)."""

    def __init__(self, window: int = WINDOW):
        self.window = window
        self.recent = {s: collections.deque(maxlen=window) for s in STAGES}
        self.totals = {s: [0, 0.0, float("inf"), float("-inf")] for s in STAGES}  # n, sum, min, max
        self.started = time.perf_counter()
        self.frames = 0

    def add(self, times_ms: dict[str, float]) -> None:
        for stage, value in times_ms.items():
            self.recent[stage].append(value)
            t = self.totals[stage]
            t[0], t[1], t[2], t[3] = t[0] + 1, t[1] + value, min(t[2], value), max(t[3], value)
        self.frames += 1

    def fps(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.frames / elapsed if elapsed > 0 else 0.0

    def summary(self) -> dict:
        out = {}
        for stage in STAGES:
            n, total, low, high = self.totals[stage]
            if not n:
                out[stage] = {"count": 0}
                continue
            recent = np.asarray(self.recent[stage], np.float64)
            out[stage] = {"count": n, "min": low, "max": high, "mean": total / n,
                          "median": float(np.median(recent)),
                          **{f"p{p}": float(np.percentile(recent, p)) for p in PERCENTILES},
                          "percentiles_over_last": len(recent)}
        return out

    def report(self, extra: str = "") -> str:
        """A jetson-inference-style timing report."""
        return ("Timing report (ms)\n" + table(self.summary()) +
                f"\n{'':>12} {self.frames} frames, {self.fps():.1f} FPS end to end{extra}")
