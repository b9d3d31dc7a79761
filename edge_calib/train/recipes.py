"""Named calibrator recipes: settings that go together, declared once here and used by
``train --recipe NAME`` (the settings a user gives override the recipe's), by ``adapt`` (its
defaults) and by ``demo camvid``. Torch-free: the CLI reads it to build its options.

``statistics``: the curve calibrator trained to restore the frozen model's source statistics,
with the terms that keep the source frames (consistency) and pull the target pixels towards
the source's (histogram); the recipe of the CamVid dusk results (RESULTS.md), chosen by the
unlabelled statistics distance among the variants that kept the day validation frames.
"""

from __future__ import annotations

from ..core.errors import EdgeCalibError

RECIPES: dict[str, dict] = {
    "statistics": {"arch": "curve", "size": "large", "objective": "stats", "w_stats": 3.0,
                   "eps": 1.0, "lr": 3e-3, "ema": 0.95, "w_consistency": 10.0,
                   "w_histogram": 10.0},
}


def recipe(name: str) -> dict:
    """The settings of recipe ``name`` (CalibratorConfig field names; ``size`` a preset)."""
    if name not in RECIPES:
        raise EdgeCalibError(f"unknown --recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return dict(RECIPES[name])

