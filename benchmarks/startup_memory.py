"""A bundle's resident memory once ``run`` has loaded and checked it: with every float session
kept (the runtime before float sessions were released) and with the float twins of the frame
graphs released (now). Each case runs in a fresh process, 3 times; medians of VmRSS (resident
after load) and VmHWM (the peak during load), from /proc/self/status.

    python benchmarks/startup_memory.py --deploy runs/cv1/deploy --out benchmarks/results/auto_domain/startup_memory.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = """
import gc, json, sys
from edge_calib.deploy.bundle import open_bundle
from edge_calib.engines import check_engines, open_engines
bundle = open_bundle(sys.argv[1])
engines = open_engines(bundle, threads=1, check=False, frames=True)
check_engines(engines, bundle)
if sys.argv[2] == "release":
    engines.release_float_sessions()
gc.collect()
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(json.dumps({k: int(status[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}))
"""


def measure(deploy: str, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, deploy, mode], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from edge_calib.core.fileio import write_json_atomic
    from edge_calib.core.provenance import capture, git_commit

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--deploy", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    runs = {mode: [measure(args.deploy, mode) for _ in range(args.repeats)]
            for mode in ("keep", "release")}
    median = lambda rows, key: sorted(r[key] for r in rows)[len(rows) // 2]  # noqa: E731
    result = {"command": "python " + " ".join(sys.argv), "commit": git_commit(),
              "machine": capture(1), "deploy": args.deploy, "runs": runs,
              "median_mib": {mode: {k: round(median(rows, k), 1) for k in ("VmRSS", "VmHWM")}
                             for mode, rows in runs.items()}}
    write_json_atomic(args.out, result)
    print(json.dumps(result["median_mib"]))


if __name__ == "__main__":
    main()
