"""Per-stage timing of the stream: capture / pre / calibrator / classifier / post / total."""

from __future__ import annotations

import time

from ..stats import summarize, table

STAGES = ("capture", "pre", "calibrator", "classifier", "post", "total")


class StageTimes:
    def __init__(self):
        self.samples: dict[str, list[float]] = {s: [] for s in STAGES}
        self.started = time.perf_counter()
        self.frames = 0

    def add(self, times_ms: dict[str, float]) -> None:
        for stage, value in times_ms.items():
            self.samples[stage].append(value)
        self.frames += 1

    def fps(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.frames / elapsed if elapsed > 0 else 0.0

    def summary(self) -> dict:
        return {stage: summarize(v) for stage, v in self.samples.items()}

    def report(self, extra: str = "") -> str:
        """A jetson-inference-style timing report."""
        return ("Timing report (ms)\n" + table(self.summary()) +
                f"\n{'':>12} {self.frames} frames, {self.fps():.1f} FPS end to end{extra}")
