#!/usr/bin/env python3
"""Which calibrator: accuracy against latency overhead, for every family and size.

    python benchmarks/calibrators.py classifiers                     # the frozen source models
    python benchmarks/calibrators.py accuracy --families all --sizes medium --seeds 0
    python benchmarks/calibrators.py costs                           # nodes, MACs, latency
    python benchmarks/calibrators.py report                          # JSON, Markdown, plot

Accuracy: every run is an ``edge-calib`` CLI call stored under
``benchmarks/results/calibrators/accuracy/<classifier>/<task>/`` with its exact command, the
commit, the machine and the parsed result (``digits.py``'s ``Step``); a stored step is skipped
and a stopped calibrator training resumes, so the grid can be run over several sittings and
machines. All calibrators train with one budget (``--epochs``, ``--max-samples`` images per
domain, Adam lr 3e-4) and are reported at their last epoch: no target labels are looked at
until the final evaluation. Tasks: five photometric shifts of MNIST (``mnist:SHIFT``, see
``edge_calib/data/shifts.py``) and the two shape shifts MNIST <-> USPS.

Costs: ONNX node count, parameters and MACs of each calibrator graph, and its latency
overhead over the classifier alone (ONNX Runtime, CPU, 1 thread, batch 1, the fused graph;
median of per-round differences in one interleaved run) at 32x32 in front of the DTN (float
and INT8 2:4) and at 480x360 in front of the LR-ASPP MobileNetV3-Small segmenter.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits import Step  # noqa: E402  (the shared step recorder)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "calibrators"
SHIFTS = ("colour", "lowlight", "haze", "blur", "texture")
TASKS = {**{f"mnist-{s}": ("mnist", f"mnist:{s}") for s in SHIFTS},
         "mnist-usps": ("mnist", "usps"), "usps-mnist": ("usps", "mnist")}
PHOTOMETRIC = tuple(f"mnist-{s}" for s in SHIFTS)
FAMILIES = ("resnet", "pointwise", "thumbnail", "lowres", "shallow")
SIZES = ("small", "medium", "large")
# The paper's calibrator is resnet at width 8, 9 blocks: its "large" preset.
REFERENCE = ("resnet", "large")
CLASSIFIERS = {"plain": [], "augment": ["--augment"]}
RECIPE = ["--lr", "3e-4", "--d-lr", "3e-4"]


def classifier_path(work: Path, recipe: str, source: str) -> Path:
    return work / "classifiers" / f"{source}_dtn_{recipe}.pt"


def train_classifiers(args):
    for recipe, source in itertools.product(args.classifiers, ("mnist", "usps")):
        step = Step(RESULTS / "classifiers", args.data_root)
        out = classifier_path(Path(args.work), recipe, source)
        step(f"{source}_{recipe}", ["train-classifier", "--dataset", source, "--arch", "dtn",
                                    "--out", str(out), "--epochs", str(args.classifier_epochs),
                                    "--seed", "0", "--quiet", *CLASSIFIERS[recipe]])


def evaluate(step, name, model_args, dataset):
    return step(name, ["eval", *model_args, "--dataset", dataset, "--split", "test", "--json"])


def run_accuracy(args):
    families = FAMILIES if args.families == ["all"] else args.families
    for recipe, task, family, size, seed in itertools.product(
            args.classifiers, args.tasks, families, args.sizes, args.seeds):
        source, target = TASKS[task]
        clf = classifier_path(Path(args.work), recipe, source)
        if not clf.exists():
            sys.exit(f"{clf} missing: run `calibrators.py classifiers` first")
        step = Step(RESULTS / "accuracy" / recipe / task, args.data_root)
        work = Path(args.work) / "accuracy" / recipe / task
        evaluate(step, "source_only_target", ["--classifier", str(clf)], target)
        evaluate(step, "source_only_source", ["--classifier", str(clf)], source)
        name = f"{family}_{size}_s{seed}"
        out = work / f"{name}.calib.pt"
        train = ["train", "--classifier", str(clf), "--source", source, "--target", target,
                 "--domain", target.replace(":", "-"), "--out", str(out), "--epochs",
                 str(args.epochs), "--max-samples", str(args.max_samples), "--seed", str(seed),
                 "--calibrator-arch", family, "--calibrator-size", size, "--quiet", *RECIPE]
        if (work / f"{name}.calib.state.pt").exists() and not out.exists():
            train.append("--resume")
        step(f"{name}_train", train)
        with_cal = ["--classifier", str(clf), "--calibrator", str(out)]
        evaluate(step, f"{name}_target", with_cal, target)
        evaluate(step, f"{name}_source", with_cal, source)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-root", default=os.environ.get(
        "EDGE_CALIB_DATA", str(ROOT.parent / "shared" / "data")))
    common.add_argument("--work", default=str(ROOT / "runs" / "calibrators"))
    common.add_argument("--classifiers", type=lambda s: s.split(","), default=["plain"],
                        help=f"Source-model recipes: {', '.join(CLASSIFIERS)}.")
    p = sub.add_parser("classifiers", parents=[common])
    p.add_argument("--classifier-epochs", type=int, default=3)
    p = sub.add_parser("accuracy", parents=[common])
    p.add_argument("--tasks", type=lambda s: list(TASKS) if s == "all" else s.split(","),
                   default=list(TASKS))
    p.add_argument("--families", type=lambda s: s.split(","), default=["all"])
    p.add_argument("--sizes", type=lambda s: s.split(","), default=["medium"])
    p.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--max-samples", type=int, default=10000)
    args = parser.parse_args()
    if args.cmd == "classifiers":
        train_classifiers(args)
    elif args.cmd == "accuracy":
        run_accuracy(args)


if __name__ == "__main__":
    main()
