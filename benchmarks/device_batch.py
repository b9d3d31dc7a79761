#!/usr/bin/env python3
"""Run several ``digits.py`` jobs side by side on a borrowed GPU machine, stop them at a
deadline, and pack what they wrote into at most eight files for the trip back.

    EDGE_CALIB_DATA=.gpu/data python benchmarks/device_batch.py --deadline 500 --out "$OUT" \
        --jobs mu0-int8,mu0-reference,mu1,mu2,um1,um2,sweep-b1,sweep-b3,sweep-b9

Every job is a resumable ``digits.py`` call: training state is saved after each epoch, so a
job stopped at the deadline comes back with its state file and finishes on any machine with
the same ``digits.py`` command. Steps that need onnxsim (bundles) fail there by design; the
training and evaluation records before them are complete and carry the GPU's name.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIGITS = [sys.executable, str(ROOT / "benchmarks" / "digits.py")]
JOBS = {  # name -> digits.py arguments
    "mu0-int8": ["run", "--task", "mnist-usps", "--seed", "0", "--variants", "int8"],
    "mu0-reference": ["run", "--task", "mnist-usps", "--seed", "0", "--variants", "reference"],
    "mu1": ["run", "--task", "mnist-usps", "--seed", "1", "--classifier-from", "0", "--variants", "adabn,ours"],
    "mu2": ["run", "--task", "mnist-usps", "--seed", "2", "--classifier-from", "0", "--variants", "adabn,ours"],
    "um1": ["run", "--task", "usps-mnist", "--seed", "1", "--classifier-from", "0", "--variants", "adabn,ours"],
    "um2": ["run", "--task", "usps-mnist", "--seed", "2", "--classifier-from", "0", "--variants", "adabn,ours"],
    "um0-augment": ["run", "--task", "usps-mnist", "--seed", "0", "--augment", "--classifier-epochs", "30",
                    "--variants", "adabn,ours"],
    "mu0-lr3": ["run", "--task", "mnist-usps", "--seed", "0", "--variants", "ours_lr3e-4"],
    "um0-lr3": ["run", "--task", "usps-mnist", "--seed", "0", "--classifier-epochs", "30",
                "--variants", "ours_lr3e-4"],
    "um0-reference": ["run", "--task", "usps-mnist", "--seed", "0", "--classifier-epochs", "30",
                      "--variants", "reference"],
    **{f"sweep-b{b}": ["sweep", "--task", "mnist-usps", "--seed", "0", "--epochs", "10", "--lr", "3e-4",
                       "--widths", "2,4,8,16", "--blocks", str(b), "--no-latency"] for b in (1, 3, 9)},
}
CHUNK = 15 * 2**20  # each returned file stays under the tool's 16 MiB


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deadline", type=float, required=True, help="Seconds before stopping.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--jobs", required=True, help=f"Comma-separated, of: {', '.join(JOBS)}.")
    args = parser.parse_args()
    logs = ROOT / "runs" / "device_logs"  # packed into the archive, not returned one by one
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    started = time.time()
    procs = {}
    for name in args.jobs.split(","):
        log = open(logs / f"{name}.log", "w")
        procs[name] = subprocess.Popen(DIGITS + JOBS[name], cwd=ROOT, env=env, stdout=log,
                                       stderr=subprocess.STDOUT)
    while any(p.poll() is None for p in procs.values()) and time.time() - started < args.deadline:
        time.sleep(5)
    for p in procs.values():
        if p.poll() is None:
            p.terminate()  # state files are replaced atomically, so stopping is safe
    for name, p in procs.items():
        p.wait()
        print(f"{name}: exit {p.returncode} after {time.time() - started:.0f} s", flush=True)
    pack(args.out, started)


def pack(out: Path, started: float):
    """Records, calibrators, metrics and logs in one archive (split into chunks); the state
    of every unfinished calibrator and every classifier trained here as its own file (an
    unfinished calibrator resumes only against the very classifier it was trained with)."""
    results, work = ROOT / "benchmarks" / "results" / "digits", ROOT / "runs" / "bench"
    members = list(results.rglob("*.json"))
    members += [p for p in work.rglob("*") if p.name.endswith((".calib.pt", ".metrics.jsonl"))]
    members += sorted((work.parent / "device_logs").glob("*.log"))
    archive = out / "results.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for p in members:
            tar.add(p, arcname=str(p.relative_to(ROOT)))
    data = archive.read_bytes()
    archive.unlink()
    for i in range(0, len(data), CHUNK):
        (out / f"results.tar.gz.{i // CHUNK}").write_bytes(data[i:i + CHUNK])
    for state in work.rglob("*.calib.state.pt"):
        if not state.with_name(state.name.replace(".state.pt", ".pt")).exists() and "sweep" not in str(state):
            (out / "states").mkdir(exist_ok=True)
            name = "__".join(state.relative_to(work).parts)
            (out / "states" / name).write_bytes(state.read_bytes())
    for clf in work.rglob("*_dtn*.pt"):
        if clf.stat().st_mtime >= started:
            (out / "models").mkdir(exist_ok=True)
            (out / "models" / "__".join(clf.relative_to(work).parts)).write_bytes(clf.read_bytes())
    for p in sorted(out.rglob("*")):
        if p.is_file():
            print(f"{p.relative_to(out)}  {p.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
