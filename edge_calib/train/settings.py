"""The calibrator trainer's settings, declared once (torch-free): each field of
``CalibratorConfig`` carries its default, its range or choices, its command-line option and its
help. ``train`` and ``adapt`` build their options from it (``commands/options.py``),
``validate`` checks the declared ranges and choices, and the jobs, the demos, the tests and the
benchmarks construct it (the benchmarks through the CLI, so their commands stay on record).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

from ..core.errors import EdgeCalibError
from ..models.families import DEFAULT_ARCH, FAMILY_SUMMARIES, PERTURBATIONS

OBJECTIVES = ("adversarial", "stats")
SELECTIONS = ("last", "entropy", "stats")
INITS = ("identity", "histogram")
SCHEDULES = ("constant", "cosine")  # the learning-rate schedules of every training loop
CLASSIFIER_MODES = ("eval", "dropout", "batch-stats", "train")  # train.frozen.FrozenForward
SIZE_HELP = ("A preset (small, medium, large) or key=value pairs, e.g. width=8,blocks=9 (resnet), "
             "hidden=32 (pointwise), grid=8,hidden=32 (thumbnail), factor=4,width=16,depth=2 "
             "(lowres), width=8,depth=1 (shallow) [default: the family's medium size; resnet: "
             "the paper's width 8, 9 blocks].")  # --calibrator-size, parsed into ``size``


def setting(default, help: str = "", *, option: str | None = None, choices: tuple = (),
            minimum: float | None = None, positive: bool = False, below: float | None = None,
            cli: bool = True, factory=None):
    """A declared setting: its ``default`` (or ``factory``), ``--option`` (from the field name
    unless given), ``choices``, the range it must keep (``minimum``, ``positive``: above 0,
    ``below``: under it; floats must also be finite) and ``help``; ``cli=False``: not an option
    of its own (set by shared options, parsed from another form, or internal)."""
    meta = {"help": help, "option": option, "choices": choices, "minimum": minimum,
            "positive": positive, "below": below, "cli": cli}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def option_name(f: dataclasses.Field) -> str:
    return f.metadata.get("option") or "--" + f.name.replace("_", "-")


WEIGHT = dict(minimum=0.0)  # a loss weight: a finite number >= 0


@dataclass
class CalibratorConfig:
    epochs: int = setting(30, minimum=1)
    batch_size: int = setting(128, minimum=1, cli=False)  # the shared --batch-size
    lr: float = setting(1e-4, "The calibrator's learning rate (Adam).", positive=True)
    d_lr: float = setting(1e-4, "The discriminators' learning rate (objective adversarial).",
                          positive=True)
    beta1: float = setting(0.5, positive=True, below=1.0, cli=False)
    eps: float = setting(0.5, "Bound on |delta| in normalised input units.", positive=True)
    arch: str = setting(DEFAULT_ARCH, "Calibrator family: " + "; ".join(
        f"{n}: {text}" for n, text in FAMILY_SUMMARIES.items()) + ".",
        option="--calibrator-arch")  # checked by the family registry (models.calibrators)
    # the family's size settings (defaults filled in); the CLI's --calibrator-size
    size: dict = setting(None, cli=False, factory=dict)
    perturbation: str = setting("symmetric", choices=PERTURBATIONS)
    patch: int = setting(8, "Pixel discriminator patch size.", minimum=1)
    w_target: float = setting(1.0, **WEIGHT)
    w_source: float = setting(0.1, **WEIGHT)
    w_pixel: float = setting(1.0, **WEIGHT)
    w_feature: float = setting(1.0, **WEIGHT)
    w_consistency: float = setting(
        0.0, "Weight of the source-consistency term: KL from the frozen network's predictions "
        "on source images to those on the calibrated source images (keeps the source domain; "
        "no labels; 0: the paper's setting).", **WEIGHT)
    w_histogram: float = setting(
        0.0, "Weight of the pixel-histogram term: per-channel 1-D Wasserstein distance from "
        "each calibrated target image's pixel values to the source images' (0: the paper's "
        "setting).", **WEIGHT)
    objective: str = setting(
        "adversarial", "adversarial: the paper's discriminators (eq. 5-7); stats: match the "
        "frozen model's activation statistics on its source data (recorded with the model; no "
        "discriminator).", choices=OBJECTIVES)
    w_stats: float = setting(1.0, "Weight of the source-statistics term (objective stats).",
                             **WEIGHT)
    stats_layers: int = setting(0, "Match the statistics of the first N recorded layers only "
                                   "(0: all).", minimum=0)
    w_entropy: float = setting(0.0, "Weight of the mean prediction entropy on calibrated target "
                                    "images.", **WEIGHT)
    w_marginal: float = setting(
        0.0, "Weight of the class-marginal term: KL from the mean prediction on calibrated "
        "target images to the source's class marginal (with --w-entropy: information "
        "maximisation).", **WEIGHT)
    classifier_mode: str = setting(
        "eval", "How the frozen classifier runs in the training forward pass (its stored state "
        "never changes).", choices=CLASSIFIER_MODES)
    d_steps: int = setting(1, minimum=1)
    ema: float = setting(0.99, "Exponential moving average of the calibrator weights (0: off).",
                         minimum=0.0, below=1.0)
    schedule: str = setting("cosine", "Learning-rate schedule over all epochs.",
                            choices=SCHEDULES)
    select: str = setting(
        "last", "Epoch selection, never on target labels: the last epoch, or the lowest "
        "prediction entropy / source-statistics distance on --holdout frames.",
        choices=SELECTIONS)
    holdout: float = setting(0.0, "Fraction of unlabelled target training images held out for "
                                  "--select.", minimum=0.0, below=1.0)
    init: str = setting(
        "identity", "Where the calibrator starts: the identity, or (curve) per-frame histogram "
        "matching to the source's recorded pixels.", choices=INITS)
    seed: int = setting(0, cli=False)  # the shared --seed
    restarts: int = setting(
        1, "Start N times from different seeds, train each for --restart-epochs and continue "
        "the one with the lowest source-statistics distance on the unlabelled target images "
        "(held-out ones with --holdout).", minimum=1)
    # epochs of each start before the choice (0: no restarts); the CLI's default depends on
    # --epochs
    restart_epochs: int = setting(0, minimum=0, cli=False)
    # which start this trainer is (its weights and order use ``run_seed``); set by restarts.py
    restart: int = setting(0, minimum=0, cli=False)
    # images resized to (h, w) for training; the CLI's --train-size HxW
    train_size: tuple[int, int] | None = setting(None, cli=False)

    @classmethod
    def options(cls) -> list[dataclasses.Field]:
        """The settings that are command-line options of their own, in declaration order."""
        return [f for f in dataclasses.fields(cls) if f.metadata["cli"]]

    def validate(self):
        """Every declared range and choice, then the rules between settings; an error names
        the option."""
        for f in dataclasses.fields(self):
            _check_declared(f, getattr(self, f.name))
        from ..models.calibrators import calibrator_class

        self.size = calibrator_class(self.arch).check_size(self.size)
        if self.init == "histogram" and not hasattr(calibrator_class(self.arch),
                                                    "start_at_histogram_matching"):
            raise EdgeCalibError(f"--init histogram needs a family that contains histogram "
                                 f"matching (curve), not {self.arch}")
        if self.restarts > 1 and not 1 <= self.restart_epochs < self.epochs:
            raise EdgeCalibError(f"--restart-epochs must be between 1 and --epochs - 1 "
                                 f"({self.epochs - 1}), got {self.restart_epochs}")
        if self.select != "last" and self.holdout <= 0:
            raise EdgeCalibError(f"--select {self.select} needs --holdout > 0 (a held-out slice "
                                 "of the unlabelled target training images)")

    @property
    def run_seed(self) -> int:
        """The seed of this start's weights and sample order (``seed`` for the first start);
        the held-out split always uses ``seed``, so every start is scored on the same frames."""
        return self.seed + 1000 * self.restart

    def calibrator_config(self) -> dict:
        return {"arch": self.arch, **self.size, "eps": self.eps, "perturbation": self.perturbation}

    def resumable_from(self, other: dict) -> list[str]:
        """Names of settings that differ from a saved run (epochs may grow unless cosine)."""
        mine = json.loads(json.dumps(dataclasses.asdict(self)))  # as saved (tuples are lists)
        other = {"w_consistency": 0.0, "w_histogram": 0.0, "objective": "adversarial",
                 "w_stats": 1.0, "stats_layers": 0, "w_entropy": 0.0,
                 "w_marginal": 0.0, "restarts": 1, "restart_epochs": 0,
                 "restart": 0} | other  # saved before
        if "arch" not in other:  # saved before there were several calibrator families
            other = other | {"arch": "resnet", "size": {"width": other.get("width"),
                                                        "blocks": other.get("blocks")}}
        diffs = [k for k in mine if k != "epochs" and other.get(k) != mine[k]]
        if self.schedule == "cosine" and other.get("epochs") != self.epochs:
            diffs.append("epochs (the cosine schedule depends on it)")
        return diffs


def _check_declared(f: dataclasses.Field, value) -> None:
    """``value`` keeps ``f``'s declared choices and range (a float also finite)."""
    meta, name = f.metadata, option_name(f)
    if meta["choices"]:
        if value not in meta["choices"]:
            raise EdgeCalibError(f"unknown {name} {value!r}; choose one of "
                                 f"{', '.join(meta['choices'])}")
        return
    if isinstance(f.default, float):
        low, high, positive = meta["minimum"], meta["below"], meta["positive"]
        kept = math.isfinite(value) and (value > 0 if positive else True) and (
            low is None or value >= low) and (high is None or value < high)
        if not kept:
            if high is not None:
                problem = f"in {'(0' if positive else f'[{low:g}'}, {high:g})"
            else:
                problem = "a positive finite number" if positive else f"a finite number >= {low:g}"
            raise EdgeCalibError(f"{name} must be {problem}, got {value}")
    elif meta["minimum"] is not None and value < meta["minimum"]:
        raise EdgeCalibError(f"{name} must be >= {meta['minimum']}, got {value}")
