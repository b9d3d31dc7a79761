#!/usr/bin/env python3
"""Data-parallel training against one process, on the real digits.

1. The source model: `edge-calib train-classifier` (DTN, 12000 MNIST images, 2 epochs, global
   batch 128) in one process and under `torchrun --nproc-per-node N`; MNIST test accuracy of
   each. The one-process model is compressed (2:4 + INT8, as the demo) and frozen.
2. The calibrator: the demo's recipe (thumbnail, adversarial, 6 epochs, 3000 images per domain,
   global batch 128) on MNIST -> mnist:colour, in one process and under torchrun with the same
   global batch and seed, for several seeds; each scored on the colour test set and on MNIST
   test (retention), beside the frozen model alone.

The wall time of every training: every process runs one thread (torchrun's default per
worker); one more one-process run at torch's default threads shows what the machine gives a
single process.

    python benchmarks/distributed.py --seeds 0 1 2 --nproc 2

Writes benchmarks/results/distributed/{results.json,report.md} (commands, commit, machine).
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
sys.path.insert(0, str(ROOT / "benchmarks"))

from edge_calib.core.fileio import write_bytes_atomic, write_json_atomic  # noqa: E402
from edge_calib.core.provenance import capture  # noqa: E402
from report_common import replace_readme_section  # noqa: E402

CLI = str(Path(sys.executable).parent / "edge-calib")


def run(command: list[str], env: dict) -> tuple[str, float]:
    started = time.perf_counter()
    r = subprocess.run(command, env=env, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"failed: {' '.join(command)}\n{r.stderr[-3000:]}")
    return r.stdout, time.perf_counter() - started


def score(classifier: str, calibrator: str | None, dataset: str, data_root: str, env,
          *extra: str) -> float:
    command = [CLI, "eval", "--classifier", classifier, "--dataset", dataset, "--split", "test",
               "--data-root", data_root, "--json", "--device", "cpu", *extra]
    if calibrator:
        command += ["--calibrator", calibrator]
    return json.loads(run(command, env)[0])["accuracy"]


def baselines(work: Path, target: str, data_root: str, env) -> dict:
    """The classical corrections on the same models, no training, no target labels: per-frame
    histogram matching to MNIST training images in front of the frozen INT8 model, and AdaBN
    (BatchNorm statistics re-estimated on the 3000 unlabelled target images the calibrators
    saw) on its float parent (the INT8 model has BatchNorm folded away)."""
    classifier = str(work / "mnist_dtn_int8.pt")
    hm = ("--photometric", "histogram", "--reference", "mnist")
    adabn = work / "mnist_dtn.n1.adabn.pt"
    command = [CLI, "adabn", "--classifier", str(work / "mnist_dtn.n1.pt"), "--target", target,
               "--data-root", data_root, "--max-samples", "3000", "--out", str(adabn)]
    run(command, env)
    return {"histogram matching (INT8 model)": {
                "target_test_acc": score(classifier, None, target, data_root, env, *hm),
                "source_test_acc": score(classifier, None, "mnist", data_root, env, *hm)},
            "AdaBN (float parent)": {
                "target_test_acc": score(str(adabn), None, target, data_root, env),
                "source_test_acc": score(str(adabn), None, "mnist", data_root, env),
                "command": shown(command)},
            "float parent alone": {
                "target_test_acc": score(str(work / "mnist_dtn.n1.pt"), None, target,
                                         data_root, env),
                "source_test_acc": score(str(work / "mnist_dtn.n1.pt"), None, "mnist",
                                         data_root, env)}}


def launch(nproc: int) -> list[str]:
    return ([CLI] if nproc == 1 else
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
             str(nproc), "--no-python", CLI])


def shown(command: list[str]) -> str:
    return " ".join("edge-calib" if c == CLI else "python" if c == sys.executable else c
                    for c in command)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--target", default="mnist:colour")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--work", default=str(ROOT / "runs" / "distributed"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "distributed"))
    parser.add_argument("--report-only", action="store_true",
                        help="Rewrite report.md and RESULTS.md's section from results.json.")
    parser.add_argument("--baselines-only", action="store_true",
                        help="Add the classical corrections to results.json (the models of a "
                             "finished run must be in --work).")
    args = parser.parse_args()
    work, out = Path(args.work), Path(args.out)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # torchrun's default per worker; the same here
    if args.report_only or args.baselines_only:
        result = json.loads((out / "results.json").read_text())
        if args.baselines_only:
            result["baselines"] = baselines(work, result["target"], args.data_root, env)
            result["baselines_command"] = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
            write_json_atomic(out / "results.json", result)
        return publish(result, out)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    sources = []
    for nproc in (1, args.nproc):
        model = work / f"mnist_dtn.n{nproc}.pt"
        command = launch(nproc) + [
            "train-classifier", "--dataset", "mnist", "--arch", "dtn", "--data-root",
            args.data_root, "--max-samples", "12000", "--epochs", "2", "--batch-size", "128",
            "--device", "cpu", "--quiet", "--out", str(model)]
        stdout, wall = run(command, env)
        printed = json.loads(stdout.strip().splitlines()[-1])
        sources.append({"processes": nproc, "world_size": printed["world_size"],
                        "train_wall_s": wall, "source_test_acc": printed["source_test_acc"],
                        "command": shown(command)})
        print(json.dumps(sources[-1]), flush=True)
    classifier = str(work / "mnist_dtn_int8.pt")
    compress = [CLI, "compress", str(work / "mnist_dtn.n1.pt"), "--prune", "2:4", "--int8",
                "--calib-dataset", "mnist", "--data-root", args.data_root, "--out", classifier,
                "--quiet"]
    run(compress, env)
    recipe = ["train", "--classifier", classifier, "--source", "mnist", "--target",
              args.target, "--domain", "colour", "--data-root", args.data_root,
              "--max-samples", "3000", "--epochs", "6", "--lr", "3e-4", "--d-lr", "3e-4",
              "--batch-size", "128", "--device", "cpu", "--quiet"]
    rows = []
    for seed in args.seeds:
        for nproc in (1, args.nproc):
            cal = work / f"colour.s{seed}.n{nproc}.calib.pt"
            command = launch(nproc) + recipe + ["--seed", str(seed), "--out", str(cal)]
            stdout, wall = run(command, env)
            printed = json.loads(stdout.strip().splitlines()[-1])
            row = {"seed": seed, "processes": nproc, "world_size": printed["world_size"],
                   "train_wall_s": wall,
                   "target_test_acc": score(classifier, str(cal), args.target, args.data_root,
                                            env),
                   "source_test_acc": score(classifier, str(cal), "mnist", args.data_root, env),
                   "command": shown(command)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    threads = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    command = launch(1) + recipe + ["--seed", str(args.seeds[0]), "--out",
                                    str(work / "colour.default_threads.calib.pt")]
    default_threads = {"seed": args.seeds[0], "processes": 1, "threads": "torch default",
                       "train_wall_s": run(command, threads)[1], "command": shown(command)}
    frozen = {"target_test_acc": score(classifier, None, args.target, args.data_root, env),
              "source_test_acc": score(classifier, None, "mnist", args.data_root, env)}
    extra = baselines(work, args.target, args.data_root, env)
    summary = {}
    for nproc in (1, args.nproc):
        mine = [r for r in rows if r["processes"] == nproc]
        summary[str(nproc)] = {
            k: {"mean": statistics.mean(r[k] for r in mine),
                "std": statistics.stdev(r[k] for r in mine) if len(mine) > 1 else 0.0}
            for k in ("target_test_acc", "source_test_acc", "train_wall_s")}
    result = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "environment": capture(1), "source_models": sources,
              "compress_command": shown(compress), "target": args.target,
              "frozen_model_alone": frozen, "baselines": extra, "runs": rows,
              "summary": summary,
              "one_process_default_threads": default_threads}
    write_json_atomic(out / "results.json", result)
    publish(result, out)


def publish(result: dict, out: Path) -> None:
    """report.md beside the results, and the same tables in RESULTS.md's section."""
    md = report(result)
    write_bytes_atomic(out / "report.md", md.encode())
    body = md.split("\n", 1)[1].replace("\n## ", "\n### ")
    replace_readme_section(ROOT / "RESULTS.md", "distributed", body.strip())
    print(md)


def report(result: dict) -> str:
    env = result["environment"]
    lines = [f"# Data-parallel training: {result['target']}, one process against torchrun", "",
             f"`python benchmarks/{result['command']}`  ", f"Machine: {env.get('cpu', '?')}, "
             f"{env.get('cores', '?')} cores; torch {env.get('versions', {}).get('torch', '?')}; commit "
             f"{env.get('commit', '?')}.", "",
             "Same command, global batch and seed, launched alone or with torchrun (gloo, "
             "one thread per process). Accuracy in % on the test splits.", "",
             "## The source model (`train-classifier`, DTN, 12000 MNIST images, 2 epochs)", "",
             "| processes | MNIST test | training wall time (s) |", "|---|---|---|"]
    for r in result["source_models"]:
        lines.append(f"| {r['processes']} | {r['source_test_acc']:.2f} | "
                     f"{r['train_wall_s']:.1f} |")
    lines += ["", f"The 1-process model compressed and frozen: `{result['compress_command']}`.",
              "", f"## The calibrator ({result['target']}, the demo's recipe)", "",
              "| processes | seed | colour test | MNIST test (retention) | training wall time (s) |",
              "|---|---|---|---|---|"]
    f = result["frozen_model_alone"]
    lines.append(f"| frozen model alone | - | {f['target_test_acc']:.2f} | "
                 f"{f['source_test_acc']:.2f} | - |")
    for name, b in result.get("baselines", {}).items():
        lines.append(f"| {name} | - | {b['target_test_acc']:.2f} | "
                     f"{b['source_test_acc']:.2f} | - |")
    for r in result["runs"]:
        lines.append(f"| {r['processes']} | {r['seed']} | {r['target_test_acc']:.2f} | "
                     f"{r['source_test_acc']:.2f} | {r['train_wall_s']:.1f} |")
    for n, s in result["summary"].items():
        lines.append(f"| **{n}, mean ± std** | | **{s['target_test_acc']['mean']:.2f} ± "
                     f"{s['target_test_acc']['std']:.2f}** | {s['source_test_acc']['mean']:.2f} ± "
                     f"{s['source_test_acc']['std']:.2f} | {s['train_wall_s']['mean']:.1f} ± "
                     f"{s['train_wall_s']['std']:.1f} |")
    d = result["one_process_default_threads"]
    lines += ["", f"One process at torch's default threads (seed {d['seed']}): "
              f"{d['train_wall_s']:.1f} s. Commands: `results.json`."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
