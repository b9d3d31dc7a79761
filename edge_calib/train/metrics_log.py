"""The calibrator trainer's metrics log (``X.calib.metrics.jsonl``, one row per epoch), typed:
the trainer writes each row through ``CalibratorEpoch.to_dict`` and every reader (the
benchmarks, the tests) reads it through ``read_metrics_log``, so a key is spelled in one place.
Torch-free. Logs written before the scores were named per task (``source_test_acc``,
``monitor_target_test_acc``) read the same."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import EdgeCalibError

SCORE = {"classification": "accuracy", "segmentation": "miou"}  # the per-epoch score per task
_OLD_SCORE = {"acc": "accuracy"}  # the key suffix classification scores had before
_BASE = ("epoch", "steps", "time_s", "lr", "world_size")


@dataclass
class CalibratorEpoch:
    """One epoch: its step count, wall time, last learning rate and processes; the mean of every
    value its steps logged (``values``: losses, discriminator accuracies, mean |delta|); and the
    scores computed after it (none of them read target labels except ``monitor_target``,
    which is logged for curves and never read by selection)."""

    epoch: int
    steps: int
    time_s: float
    lr: float
    world_size: int = 1
    values: dict[str, float] = field(default_factory=dict)
    score_name: str = "accuracy"  # accuracy (classification) or miou (segmentation)
    source_split: str | None = None  # the labelled source frames scored: test, or val (CamVid)
    source_score: float | None = None
    holdout_entropy: float | None = None  # mean prediction entropy on held-out target frames
    holdout_stats: float | None = None  # source-statistics distance on them
    monitor_target: float | None = None  # target test score (--monitor-test)

    def holdout(self, rule: str) -> float:
        """The held-out score a ``--select`` rule (entropy, stats) minimises."""
        value = {"entropy": self.holdout_entropy, "stats": self.holdout_stats}[rule]
        if value is None:
            raise EdgeCalibError(f"epoch {self.epoch} has no held-out {rule} score")
        return value

    def to_dict(self) -> dict:
        """The log's row: the base keys, every value, then the scores that were computed."""
        row = {"epoch": self.epoch, "steps": self.steps, "time_s": self.time_s, **self.values,
               "lr": self.lr, "world_size": self.world_size}
        if self.source_score is not None:
            row[f"source_{self.source_split}_{self.score_name}"] = self.source_score
        if self.holdout_entropy is not None:
            row["holdout_entropy"] = self.holdout_entropy
        if self.holdout_stats is not None:
            row["holdout_stats"] = self.holdout_stats
        if self.monitor_target is not None:
            row[f"monitor_target_test_{self.score_name}"] = self.monitor_target
        return row

    @classmethod
    def from_dict(cls, row: dict, where: str = "metrics log") -> "CalibratorEpoch":
        """A row as written (by this version or an older one); a missing base key is one line
        naming it."""
        missing = [k for k in _BASE[:4] if k not in row]
        if missing:
            raise EdgeCalibError(f"{where}: a row has no {missing[0]!r}: {json.dumps(row)[:120]}")
        out = cls(epoch=row["epoch"], steps=row["steps"], time_s=row["time_s"], lr=row["lr"],
                  world_size=row.get("world_size", 1))
        for key, value in row.items():
            if key in _BASE:
                continue
            prefix, _, suffix = key.rpartition("_")
            name = _OLD_SCORE.get(suffix, suffix)
            if key.startswith("monitor_target_test_") and name in SCORE.values():
                out.monitor_target, out.score_name = value, name
            elif key.startswith("source_") and name in SCORE.values() and prefix.count("_") == 1:
                out.source_split, out.source_score = prefix.split("_")[1], value
                out.score_name = name
            elif key in ("holdout_entropy", "holdout_stats"):
                setattr(out, key, value)
            else:
                out.values[key] = value
        return out


def read_metrics_log(path: str | Path) -> list[CalibratorEpoch]:
    """Every epoch of a calibrator's metrics log, in order."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise EdgeCalibError(f"{path}: cannot read the metrics log ({exc.strerror})") from None
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise EdgeCalibError(f"{path}: line {number} is not JSON") from None
    return [CalibratorEpoch.from_dict(r, f"{path}") for r in rows]
