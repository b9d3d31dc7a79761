#!/usr/bin/env python3
"""Picking a calibrator per digit shift without target labels: for every (task, seed), the
candidate calibrators that ``calibrators.py accuracy`` trained (``--candidates``, names without
``_sSEED``) are scored on held-out *unlabelled* target training images (those the calibrator's
``--max-samples`` subset left out; labels never read), one is chosen by ``--criterion``, and its
target and source test accuracies (already stored beside it) are reported.

    python benchmarks/unlabelled_selection.py --candidates curve_large_matrix_stats,curve_large_matrix \\
        --criterion information --seeds 0,1,2

The rule is fixed before any result is read: ``information`` (H(mean p) - mean H(p), higher is
better) was declared on 2026-12-02 because neither candidate recipe optimises it (one minimises
the statistics distance and the pixel histogram gap, the other fools a discriminator), so it
judges both from outside. The other criteria's choices are written beside it, and the Spearman
rank correlation of each criterion with target accuracy over the candidates of each task.
Writes ``selection.json`` and ``selection.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibrators import PHOTOMETRIC, RESULTS, TASKS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HIGHER_IS_BETTER = {"information": True, "stats_distance": False, "pixel_w1": False,
                    "entropy": False}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", required=True, type=lambda s: s.split(","))
    parser.add_argument("--criterion", choices=sorted(HIGHER_IS_BETTER), default="information")
    parser.add_argument("--tasks", type=lambda s: s.split(","), default=list(PHOTOMETRIC))
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")],
                        default=[0, 1, 2])
    parser.add_argument("--classifier-recipe", default="plain")
    parser.add_argument("--holdout", type=int, default=5000,
                        help="held-out unlabelled target training images scored per candidate")
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--out", default=str(RESULTS / "selection"))
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    from edge_calib.core.fileio import write_bytes_atomic, write_json_atomic
    from edge_calib.core.provenance import capture
    from edge_calib.data import load_dataset
    from edge_calib.models.store import load_calibrator, load_classifier
    from edge_calib.train.evaluate import unlabelled_scores
    from edge_calib.train.tensors import DomainData
    from report_camvid import spearman

    torch.set_num_threads(1)
    rows, missing, classifiers = [], [], {}
    for task in args.tasks:
        records = RESULTS / "accuracy" / args.classifier_recipe / task
        target_train = load_dataset(TASKS[task][1], "train", args.data_root, unlabelled=True)
        for seed in args.seeds:
            for candidate in args.candidates:
                name = f"{candidate}_s{seed}"
                paths = {k: records / f"{name}_{k}.json" for k in ("train", "target", "source")}
                if not all(p.is_file() for p in paths.values()):
                    missing.append(f"{task}/{name}")
                    continue
                record = {k: json.loads(p.read_text()) for k, p in paths.items()}
                train = shlex.split(record["train"]["command"])
                value = lambda flag: train[train.index(flag) + 1]  # noqa: E731
                source_model = value("--classifier")
                if source_model not in classifiers:
                    classifiers[source_model] = load_classifier(ROOT / source_model)
                clf = classifiers[source_model]
                cal = load_calibrator(ROOT / value("--out"))
                images = target_train.held_out(int(value("--max-samples")), int(value("--seed")))
                held_out = DomainData(images.subset(args.holdout, seed=0), clf.spec)
                with torch.no_grad():
                    scores = unlabelled_scores(clf.module, held_out, clf.source_stats,
                                               cal.module.eval(), batch_size=500)
                rows.append({"task": task, "seed": seed, "candidate": candidate,
                             **{k: round(v, 5) for k, v in scores.items()},
                             "target_accuracy": record["target"]["result"]["accuracy"],
                             "source_accuracy": record["source"]["result"]["accuracy"],
                             "held_out_images": len(held_out)})
                print(json.dumps(rows[-1]), flush=True)
    if missing:
        print(f"not yet trained (skipped): {', '.join(missing)}", file=sys.stderr)
    summary = {c: choose(rows, args, c) for c in HIGHER_IS_BETTER}
    ranking = {c: {task: spearman([preference(r, c) for r in group],
                                  [r["target_accuracy"] for r in group])
                   for task in args.tasks
                   if len(group := [r for r in rows if r["task"] == task]) > 2}
               for c in HIGHER_IS_BETTER}
    out = Path(args.out)
    write_json_atomic(out / "selection.json", {
        "command": shlex.join(["python", "benchmarks/unlabelled_selection.py", *sys.argv[1:]]),
        "declared_criterion": args.criterion, "candidates": args.candidates,
        "seeds": args.seeds, "held_out_from": "the target training split, the images the "
        "calibrator's --max-samples subset left out (labels not read)",
        "selected": summary, "spearman_with_target_accuracy": ranking,
        "provenance": capture(threads=1), "rows": rows})
    write_bytes_atomic(out / "selection.md", markdown(rows, summary, args).encode())
    print(markdown(rows, summary, args))


def preference(row: dict, criterion: str) -> float:
    """The row's criterion, signed so that higher is preferred."""
    return row[criterion] if HIGHER_IS_BETTER[criterion] else -row[criterion]


def choose(rows: list[dict], args, criterion: str) -> dict:
    """Per (task, seed), the candidate the criterion prefers; the chosen target and source
    accuracies averaged over seeds per task, and the mean of the per-task means."""
    per_task = {}
    for task in args.tasks:
        picks = []
        for seed in args.seeds:
            group = [r for r in rows if r["task"] == task and r["seed"] == seed]
            if len(group) == len(args.candidates):
                picks.append(max(group, key=lambda r: preference(r, criterion)))
        if picks:
            per_task[task] = {
                "picked": [f"{r['candidate']}_s{r['seed']}" for r in picks],
                "target_accuracy": round(sum(r["target_accuracy"] for r in picks) / len(picks), 3),
                "source_accuracy": round(sum(r["source_accuracy"] for r in picks) / len(picks), 3)}
    complete = len(per_task) == len(args.tasks)
    return {"per_task": per_task, "mean_target_accuracy": round(
        sum(t["target_accuracy"] for t in per_task.values()) / len(per_task), 3)
        if complete else None}


def markdown(rows: list[dict], summary: dict, args) -> str:
    lines = [f"Declared criterion: **{args.criterion}** (held-out unlabelled target training "
             f"images, {args.holdout} per candidate). Candidates: {', '.join(args.candidates)}.",
             "", "| task | seed | candidate | information | stats distance | pixel W1 | "
             "entropy | target acc. | source acc. |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['seed']} | {r['candidate']} | {r['information']:.4f} "
                     f"| {r['stats_distance']:.4f} | {r['pixel_w1']:.4f} | {r['entropy']:.4f} "
                     f"| {r['target_accuracy']:.2f} | {r['source_accuracy']:.2f} |")
    lines += ["", "| criterion | " + " | ".join(args.tasks) + " | mean of tasks |",
              "|---|" + "---|" * (len(args.tasks) + 1)]
    for criterion, picked in summary.items():
        cells = [f"{t['target_accuracy']:.1f} ({t['source_accuracy']:.1f})"
                 if (t := picked["per_task"].get(task)) else "" for task in args.tasks]
        mean = picked["mean_target_accuracy"]
        mark = " (declared)" if criterion == args.criterion else ""
        lines.append(f"| {criterion}{mark} | " + " | ".join(cells) +
                     f" | {'' if mean is None else f'{mean:.1f}'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
