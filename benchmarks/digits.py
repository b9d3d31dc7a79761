#!/usr/bin/env python3
"""Accuracy reproduction on the real digit datasets: resumable, every number with its command.

    python benchmarks/digits.py run --task mnist-usps --seed 0 --epochs 50
    python benchmarks/digits.py sweep --task mnist-usps --seed 0 --epochs 10
    python benchmarks/digits.py report

Each step runs the ``edge-calib`` CLI in a subprocess and stores, under
``benchmarks/results/digits/<task>/seed<k>/<step>.json``, the exact command, the git commit,
the machine and the parsed result. A step whose result file exists is skipped, and calibrator
training resumes from its last epoch, so the full set can be run across several sittings.
``report`` aggregates everything into ``digits.json`` / ``digits.md`` and RESULTS.md's
section. Model selection never looks at target test labels: calibrated numbers are the last
epoch; the per-epoch target test accuracy (``--monitor-test``) is used only to report the mean
of the last five epochs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from steps import Step, common_arguments

from edge_calib.train.metrics_log import read_metrics_log

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "digits"
TASKS = {"mnist-usps": ("mnist", "usps"), "usps-mnist": ("usps", "mnist"),
         "svhn-mnist": ("svhn", "mnist")}
# The paper's protocol (Adam 1e-4, batch 128) with edge-calib's defaults: frozen classifier in
# eval mode, symmetric identity-initialised perturbation, EMA of the weights, cosine schedule.
OURS = ["--lr", "1e-4", "--d-lr", "1e-4", "--eps", "0.5", "--calibrator-arch", "resnet",
        "--width", "8", "--blocks", "9",
        "--ema", "0.99", "--schedule", "cosine"]
# The authors' code: classifier left in train mode, one-sided perturbation, no EMA/schedule.
REFERENCE = ["--lr", "1e-4", "--d-lr", "1e-4", "--eps", "0.4",
             "--calibrator-arch", "resnet", "--width", "8", "--blocks", "9",
             "--classifier-mode", "train", "--perturbation", "one-sided", "--ema", "0",
             "--schedule", "constant"]


def with_lr(recipe: list[str], lr: str) -> list[str]:
    """The recipe with the calibrator's and the discriminators' learning rate set to lr."""
    out = list(recipe)
    out[out.index("--lr") + 1] = out[out.index("--d-lr") + 1] = lr
    return out


# The edge-calib recipe at the learning rate the 10-epoch pilots and the size sweep preferred.
OURS_LR3 = with_lr(OURS, "3e-4")


def evaluate(step, name, model_args, dataset):
    return step(name, ["eval", *model_args, "--dataset", dataset, "--split", "test", "--json"])


def epoch_summary(metrics_path: Path) -> dict:
    """From a training metrics log: per-epoch monitor accuracy (target test labels, for curves
    only), the mean of the last five epochs, and the mean time per epoch."""
    log = read_metrics_log(metrics_path)
    monitor = [row.monitor_target for row in log]
    return {"monitor_target_test_acc_per_epoch": monitor,
            "last5_monitor_target_test_acc": statistics.mean(monitor[-5:]) if None not in monitor[-5:] else None,
            "source_test_acc_per_epoch": [row.source_score for row in log],
            "time_per_epoch_s": statistics.mean(row.time_s for row in log)}


def add_epoch_summary(record_path: Path, metrics_path: Path) -> dict:
    """Store the epoch summary inside the step's record (once)."""
    record = json.loads(record_path.read_text())
    if "last5_monitor_target_test_acc" not in record["result"]:
        record["result"].update(epoch_summary(metrics_path))
        tmp = record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        tmp.replace(record_path)
    return record["result"]


def train_calibrator(step, work, name, classifier, source, target, seed, epochs, recipe):
    out = work / f"{name}.calib.pt"
    args = ["train", "--classifier", str(classifier), "--source", source, "--target", target,
            "--domain", target, "--out", str(out), "--epochs", str(epochs), "--seed", str(seed),
            "--monitor-test", "--quiet", *recipe]
    state = work / f"{name}.calib.state.pt"
    if state.exists() and not out.exists():
        args.append("--resume")
    step(f"{name}_train", args)
    return out, add_epoch_summary(step.folder / f"{name}_train.json",
                                  work / f"{name}.calib.metrics.jsonl")


def run_task(args):
    source, target = TASKS[args.task]
    # an augmented source classifier is another model: its own results, never mixed in
    task = args.task + ("-augment" if args.augment else "")
    folder = RESULTS / task / f"seed{args.seed}"
    work = Path(args.work) / task / f"seed{args.seed}"
    work.mkdir(parents=True, exist_ok=True)
    step = Step(folder, args.data_root)
    clf = work / f"{source}_dtn.pt"
    if args.classifier_from is not None:  # vary only the calibrator's seed
        shared = Path(args.work) / task / f"seed{args.classifier_from}" / f"{source}_dtn.pt"
        if not shared.exists():
            sys.exit(f"{shared} missing: run seed {args.classifier_from} first")
        clf = shared
    else:
        step("classifier", ["train-classifier", "--dataset", source, "--arch", "dtn", "--out",
                            str(clf), "--epochs", str(args.classifier_epochs), "--seed",
                            str(args.seed), "--quiet",
                            *(["--augment", "geometric"] if args.augment else [])])
    evaluate(step, "source_only_target", ["--classifier", str(clf)], target)
    evaluate(step, "source_only_source", ["--classifier", str(clf)], source)
    if "adabn" in args.variants:
        adabn = work / "adabn.pt"
        step("adabn", ["adabn", "--classifier", str(clf), "--target", target, "--out", str(adabn)])
        evaluate(step, "adabn_target", ["--classifier", str(adabn)], target)
        evaluate(step, "adabn_source", ["--classifier", str(adabn)], source)
    for variant, recipe in (("ours", OURS), ("ours_lr3e-4", OURS_LR3), ("reference", REFERENCE)):
        if variant not in args.variants:
            continue
        cal, _ = train_calibrator(step, work, variant, clf, source, target, args.seed,
                                  args.epochs, recipe)
        with_cal = ["--classifier", str(clf), "--calibrator", str(cal)]
        evaluate(step, f"{variant}_target", with_cal, target)
        evaluate(step, f"{variant}_source", with_cal, source)
    if "int8" in args.variants:
        q = work / f"{source}_dtn_int8.pt"
        step("compress", ["compress", str(clf), "--prune", "2:4", "--int8", "--calib-dataset", source,
                          "--out", str(q), "--quiet"])
        cal, _ = train_calibrator(step, work, "int8", q, source, target, args.seed, args.epochs, OURS)
        bundle = work / "bundle"
        step("bundle", ["export", "--classifier", str(q), "--calibrator", f"{target}={cal}",
                        "--calibrator", f"{source}=identity", "--out", str(bundle), "--force",
                        "--data-root", args.data_root])
        deploy = ["--deploy", str(bundle)]
        evaluate(step, "int8_source_only_target", deploy + ["--domain", source], target)
        evaluate(step, "int8_source_only_source", deploy + ["--domain", source], source)
        evaluate(step, "int8_target", deploy + ["--domain", target], target)
        evaluate(step, "int8_source", deploy + ["--domain", target], source)


def run_sweep(args):
    """Calibrator sizes: accuracy (last epoch) and measured latency overhead (ONNX Runtime,
    batch 1, interleaved with the classifier alone) for each width x blocks."""
    source, target = TASKS[args.task]
    base = RESULTS / args.task / f"seed{args.seed}"
    work = Path(args.work) / args.task / f"seed{args.seed}"
    clf = work / f"{source}_dtn.pt"
    if not clf.exists():
        sys.exit(f"{clf} missing: run `digits.py run --task {args.task} --seed {args.seed}` first")
    sweep = f"sweep_e{args.epochs}"
    step = Step(base / sweep, args.data_root)
    for width in args.widths:
        for blocks in args.blocks:
            name = f"w{width}_b{blocks}"
            recipe = list(OURS)
            recipe[recipe.index("--width") + 1] = str(width)
            recipe[recipe.index("--blocks") + 1] = str(blocks)
            if args.lr:
                recipe = with_lr(recipe, args.lr)
            cal, _ = train_calibrator(step, work / sweep, name, clf, source, target, args.seed,
                                      args.epochs, recipe)
            with_cal = ["--classifier", str(clf), "--calibrator", str(cal)]
            evaluate(step, f"{name}_target", with_cal, target)
            evaluate(step, f"{name}_source", with_cal, source)
            if args.no_latency:
                continue
            bundle = work / sweep / f"{name}.bundle"
            step(f"{name}_bundle", ["export", "--classifier", str(clf), "--calibrator",
                                    f"{target}={cal}", "--out", str(bundle), "--force",
                                    "--no-auto-domain", "--quiet"])
            step(f"{name}_latency", ["bench", "--deploy", str(bundle), "--report",
                                     str(work / sweep / f"{name}.report"), "--batch", "1",
                                     "--iterations", "300", "--no-stream", "--json"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    common = common_arguments("bench")
    for name in ("run", "sweep"):
        p = sub.add_parser(name, parents=[common])
        p.add_argument("--task", choices=TASKS, required=True)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--epochs", type=int, default=50)
    run = sub.choices["run"]
    run.add_argument("--classifier-epochs", type=int, default=10)
    run.add_argument("--augment", action="store_true")
    run.add_argument("--classifier-from", type=int, default=None,
                     help="Reuse that seed's source classifier (only the calibrator seed varies).")
    run.add_argument("--variants", type=lambda s: s.split(","), default=["adabn", "ours", "reference", "int8"])
    sweep = sub.choices["sweep"]
    sweep.add_argument("--widths", type=lambda s: [int(v) for v in s.split(",")], default=[2, 4, 8, 16])
    sweep.add_argument("--blocks", type=lambda s: [int(v) for v in s.split(",")], default=[1, 3, 9])
    sweep.add_argument("--lr", default=None, help="Learning rate for G and D (default: OURS).")
    sweep.add_argument("--no-latency", action="store_true",
                       help="Train and evaluate only (e.g. on a GPU machine without onnxsim); "
                            "a later run without it adds the bundles and latencies.")
    sub.add_parser("report")
    backfill = sub.add_parser("backfill", help="Store epoch summaries in training records "
                                               "written before they were kept.")
    backfill.add_argument("--work", default=str(ROOT / "runs" / "bench"))
    args = parser.parse_args()
    if args.cmd == "run":
        run_task(args)
    elif args.cmd == "sweep":
        run_sweep(args)
    elif args.cmd == "backfill":
        for record in RESULTS.glob("*/seed*/**/*_train.json"):
            rel = record.relative_to(RESULTS)
            task, seed, sub_dir = rel.parts[0], rel.parts[1], rel.parts[2:-1]
            name = record.stem[: -len("_train")]
            metrics = Path(args.work) / task / seed / Path(*sub_dir) / f"{name}.calib.metrics.jsonl"
            if metrics.exists():
                add_epoch_summary(record, metrics)
    else:
        from report_digits import write_report
        write_report(RESULTS, ROOT / "RESULTS.md")


if __name__ == "__main__":
    main()
