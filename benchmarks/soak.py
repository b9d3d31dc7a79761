#!/usr/bin/env python3
"""A long headless run of ``edge-calib run`` on a looping video with predictions on, its
resident memory sampled from /proc every few seconds: memory must stay flat after warm-up.

    python benchmarks/soak.py --deploy .edge-calib-demo/bundle-colour-thumbnail \
        --input .edge-calib-demo/stream-colour.avi --minutes 30

The stream is paced like a camera (``--realtime --fps 30``); the run ends with SIGTERM, which
also checks that it stops cleanly with its outputs flushed. Results: JSON, Markdown and a plot
in ``benchmarks/results/soak/``.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "soak"


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def soak(deploy: str, video: str, seconds: float, every: float, fps: float, warmup: float) -> dict:
    out = Path(tempfile.mkdtemp(prefix="soak-"))
    predictions = out / "predictions.jsonl"
    command = [str(Path(sys.executable).with_name("edge-calib")), "run", "--deploy", deploy, "--input", video, "--loop", "--realtime",
               "--fps", str(fps), "--domain", "auto", "--headless", "--threads", "1",
               "--predictions", str(predictions), "--json"]
    print(" ".join(command), file=sys.stderr)
    log = (out / "stderr.log").open("w")  # a file: a pipe nobody reads would fill and block
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    started, samples = time.time(), []
    while time.time() - started < seconds and proc.poll() is None:
        time.sleep(every)
        mb = rss_mb(proc.pid)
        if mb is not None:
            samples.append((round(time.time() - started, 1), round(mb, 2)))
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=60)
    log.close()
    stderr = (out / "stderr.log").read_text()
    frames = sum(1 for _ in predictions.open()) if predictions.exists() else 0
    after = [mb for t, mb in samples if t >= warmup]
    summary = json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else {}
    return {"command": " ".join(["edge-calib", *command[1:]]), "seconds": round(time.time() - started, 1),
            "exit": proc.returncode, "frames_in_predictions": frames,
            "traceback": "Traceback" in stderr, "samples": samples, "warmup_s": warmup,
            "rss_after_warmup_mb": {"first": after[0] if after else None,
                                    "last": after[-1] if after else None,
                                    "min": min(after, default=None),
                                    "max": max(after, default=None)},
            "summary": {k: summary.get(k) for k in ("frames", "fps", "captured", "dropped", "corrupt",
                                                    "switches", "wall_s")}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deploy", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--every", type=float, default=10, help="Seconds between RSS samples.")
    parser.add_argument("--fps", type=float, default=30)
    parser.add_argument("--warmup", type=float, default=60)
    args = parser.parse_args()
    result = soak(args.deploy, args.input, 60 * args.minutes, args.every, args.fps, args.warmup)
    sys.path.insert(0, str(ROOT))
    from edge_calib.core.provenance import capture, git_commit

    sha, dirty = git_commit(ROOT)
    result |= {"commit": sha, "uncommitted_changes": dirty, "machine": capture()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    r = result["rss_after_warmup_mb"]
    md = (f"# Soak: `edge-calib run` for {result['seconds'] / 60:.1f} min\n\n"
          f"`{result['command']}`\n\n"
          f"- frames written to --predictions: {result['frames_in_predictions']}\n"
          f"- exit after SIGTERM: {result['exit']}, traceback: {result['traceback']}\n"
          f"- RSS after {args.warmup:.0f} s warm-up: first {r['first']} MB, last {r['last']} MB, "
          f"min {r['min']} MB, max {r['max']} MB (spread {r['max'] - r['min']:.2f} MB)\n"
          f"- machine: {result['machine'].get('cpu')}; commit {sha}\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3))
        ax.plot([t / 60 for t, _ in result["samples"]], [m for _, m in result["samples"]])
        ax.set_xlabel("minutes")
        ax.set_ylabel("RSS (MB)")
        ax.set_ylim(0, 1.15 * max(m for _, m in result["samples"]))
        fig.tight_layout()
        fig.savefig(RESULTS / "rss.png", dpi=110)
        md += "\n![RSS over time](rss.png)\n"
    except ImportError:
        pass
    (RESULTS / "soak.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
