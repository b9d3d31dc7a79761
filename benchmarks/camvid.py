#!/usr/bin/env python3
"""CamVid day -> dusk: a frozen, compressed segmenter on real road frames, with and without
calibrators, against AdaBN and classical photometric baselines.

    python benchmarks/camvid.py segmenter          # train on the 305 day frames (resumable)
    python benchmarks/camvid.py compress           # 2:4 + INT8
    python benchmarks/camvid.py baselines          # source only, AdaBN, histogram, gain/gamma
    python benchmarks/camvid.py calibrators --families thumbnail,resnet --seeds 0,1,2
    python benchmarks/camvid.py report

The protocol of ``../shared/data/camvid/README.md``: source = day training frames (labelled),
day validation frames for the source model; target = the 62 dusk training frames, labels never
read; report mIoU, per-class IoU and pixel accuracy on the 62 dusk test frames and, for
retention, on the 171 day test frames. Each step is an ``edge-calib`` CLI call stored under
``benchmarks/results/camvid/`` with its command, commit and machine (``digits.py``'s Step).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from steps import Step, common_arguments  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "camvid"
SOURCE, TARGET = "camvid:day", "camvid:dusk"


def paths(work: Path) -> dict:
    return {"float": work / "camvid_day.pt", "int8": work / "camvid_day_int8.pt"}


def run_segmenter(args, step):
    step("segmenter", ["train-classifier", "--dataset", SOURCE, "--arch", "lraspp_small",
                       "--out", str(paths(Path(args.work))["float"]), "--epochs",
                       str(args.epochs), "--batch-size", "8", "--lr", "2e-3", "--quiet",
                       *(["--resume"] if args.resume else [])])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    common = common_arguments("camvid")
    p = sub.add_parser("segmenter", parents=[common])
    p.add_argument("--epochs", type=int, default=120)
    p.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    step = Step(RESULTS, args.data_root)
    if args.cmd == "segmenter":
        run_segmenter(args, step)


if __name__ == "__main__":
    main()
