#!/usr/bin/env python3
"""Data-parallel training against one process: the same calibrator recipe (the demo's: thumbnail,
adversarial, 6 epochs, 3000 images per domain, global batch 128) on MNIST -> mnist:colour,
trained by `edge-calib train` in one process and by `torchrun --nproc-per-node N` with the same
global batch and seed, for several seeds; each calibrator scored on the colour test set and on
MNIST test (retention), beside the frozen model alone. Also the wall time of each training.

    python benchmarks/distributed.py --classifier .edge-calib-demo/mnist_dtn_int8.pt \
        --seeds 0 1 2 --nproc 2

(the classifier is the INT8 DTN that `edge-calib demo` trains). Writes
benchmarks/results/distributed/{results.json,report.md} (commands, commit, machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_calib.core.fileio import write_bytes_atomic, write_json_atomic  # noqa: E402
from edge_calib.core.provenance import capture  # noqa: E402

CLI = str(Path(sys.executable).parent / "edge-calib")


def run(command: list[str], env: dict) -> tuple[str, float]:
    started = time.perf_counter()
    r = subprocess.run(command, env=env, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"failed: {' '.join(command)}\n{r.stderr[-3000:]}")
    return r.stdout, time.perf_counter() - started


def score(classifier: str, calibrator: str | None, dataset: str, data_root: str, env) -> float:
    command = [CLI, "eval", "--classifier", classifier, "--dataset", dataset, "--split", "test",
               "--data-root", data_root, "--json", "--device", "cpu"]
    if calibrator:
        command += ["--calibrator", calibrator]
    return json.loads(run(command, env)[0])["accuracy"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifier", required=True)
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--target", default="mnist:colour")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--work", default=str(ROOT / "runs" / "distributed"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "distributed"))
    args = parser.parse_args()
    work, out = Path(args.work), Path(args.out)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # torchrun's default per worker; the same here
    recipe = ["train", "--classifier", args.classifier, "--source", "mnist", "--target",
              args.target, "--domain", "colour", "--data-root", args.data_root,
              "--max-samples", "3000", "--epochs", "6", "--lr", "3e-4", "--d-lr", "3e-4",
              "--batch-size", "128", "--device", "cpu", "--quiet"]
    rows = []
    for seed in args.seeds:
        for nproc in (1, args.nproc):
            cal = work / f"colour.s{seed}.n{nproc}.calib.pt"
            command = ([CLI] if nproc == 1 else
                       [sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc-per-node", str(nproc), "--no-python", CLI])
            command += recipe + ["--seed", str(seed), "--out", str(cal)]
            stdout, wall = run(command, env)
            printed = json.loads(stdout.strip().splitlines()[-1])
            row = {"seed": seed, "processes": nproc, "world_size": printed["world_size"],
                   "train_wall_s": wall,
                   "target_test_acc": score(args.classifier, str(cal), args.target,
                                            args.data_root, env),
                   "source_test_acc": score(args.classifier, str(cal), "mnist",
                                            args.data_root, env),
                   "command": " ".join(["edge-calib" if c == CLI else c for c in command])}
            print(json.dumps(row), flush=True)
            rows.append(row)
    frozen = {"target_test_acc": score(args.classifier, None, args.target, args.data_root, env),
              "source_test_acc": score(args.classifier, None, "mnist", args.data_root, env)}
    summary = {}
    for nproc in (1, args.nproc):
        mine = [r for r in rows if r["processes"] == nproc]
        summary[str(nproc)] = {
            k: {"mean": statistics.mean(r[k] for r in mine),
                "std": statistics.stdev(r[k] for r in mine) if len(mine) > 1 else 0.0}
            for k in ("target_test_acc", "source_test_acc", "train_wall_s")}
    result = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "environment": capture(1), "classifier": args.classifier, "target": args.target,
              "frozen_model_alone": frozen, "runs": rows, "summary": summary}
    write_json_atomic(out / "results.json", result)
    write_bytes_atomic(out / "report.md", report(result).encode())
    print(report(result))


def report(result: dict) -> str:
    env = result["environment"]
    lines = [f"# Data-parallel training: {result['target']}, one process against torchrun", "",
             f"`python benchmarks/{result['command']}`  ", f"Machine: {env.get('cpu', '?')}, "
             f"{env.get('cores', '?')} cores; torch {env.get('versions', {}).get('torch', '?')}; commit "
             f"{env.get('commit', '?')}.", "",
             "Same command, global batch and seed; the second column launched with torchrun "
             "(gloo, one thread per process). Accuracy in % on the test splits.", "",
             "| processes | seed | colour test | MNIST test (retention) | training wall time (s) |",
             "|---|---|---|---|---|"]
    f = result["frozen_model_alone"]
    lines.append(f"| frozen model alone | - | {f['target_test_acc']:.2f} | "
                 f"{f['source_test_acc']:.2f} | - |")
    for r in result["runs"]:
        lines.append(f"| {r['processes']} | {r['seed']} | {r['target_test_acc']:.2f} | "
                     f"{r['source_test_acc']:.2f} | {r['train_wall_s']:.1f} |")
    for n, s in result["summary"].items():
        lines.append(f"| **{n}, mean ± std** | | **{s['target_test_acc']['mean']:.2f} ± "
                     f"{s['target_test_acc']['std']:.2f}** | {s['source_test_acc']['mean']:.2f} ± "
                     f"{s['source_test_acc']['std']:.2f} | {s['train_wall_s']['mean']:.1f} ± "
                     f"{s['train_wall_s']['std']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
