"""How far the memory check before training (``edge_calib.train.memory_budget``) is from what a
training step really uses: for each model and batch, a fresh process builds the model, runs two
real steps (forward, backward, AdamW) and reads its peak resident memory (VmHWM, reset through
/proc/self/clear_refs just before the steps), then takes the estimate as training does. Reported: the
estimate, the measured increase over the memory held before the steps, their ratio (above 1:
the estimate is on the safe side), each a median over the repeats.

    python benchmarks/train_memory.py --out benchmarks/results/train_memory
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (architecture, classes, channels, height, width, batch); the imported ONNX-zoo mnist-8 frozen
# behind a trainable per-channel gain, as a calibrator trains against an imported model
CASES = (("dtn", 10, 3, 32, 32, 128), ("dtn", 10, 3, 32, 32, 1024),
         ("lraspp_small", 12, 3, 288, 384, 8), ("lraspp_small", 12, 3, 288, 384, 16),
         ("onnx:mnist-8", 10, 1, 28, 28, 1024))

CHILD = """
import json, sys
import torch
import torch.nn.functional as F
torch.set_num_threads(1)
from edge_calib.train.memory_budget import step_memory
arch, (classes, c, h, w, batch) = sys.argv[1], map(int, sys.argv[2:7])
if arch.startswith("onnx:"):  # frozen, as imported models are: a calibrator-like step,
    from edge_calib.models.store import imported_module  # gradients to a per-channel gain
    frozen = imported_module(open(sys.argv[7], "rb").read())
    class Calibrated(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = torch.nn.Parameter(torch.ones(1, c, 1, 1))
        def forward(self, x):
            return frozen(x * self.gain)
    model = Calibrated()
else:
    from edge_calib.models.classifiers import build_classifier
    model = build_classifier(arch, num_classes=classes)
model.train()
dense = arch == "lraspp_small"
def data(n):
    x = torch.randn(n, c, h, w)
    y = torch.randint(0, classes, (n, h, w) if dense else (n,))
    return x, y
def forward(n):
    x, y = data(n)
    return F.cross_entropy(model(x), y)
trainable = [p for p in model.parameters() if p.requires_grad]
optimiser = torch.optim.AdamW(trainable)
x, y = data(batch)
def status():
    return {k: int(v.split()[0]) * 1024 for k, v in
            (line.split(":", 1) for line in open("/proc/self/status")) if k in ("VmRSS", "VmHWM")}
open("/proc/self/clear_refs", "w").write("5")
before = status()["VmRSS"]
for _ in range(2):  # the real steps first, in a process that has run nothing else
    optimiser.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimiser.step()
measured = status()["VmHWM"] - before
del optimiser
memory = step_memory(forward, trainable, (2, 4))
print(json.dumps({"estimate": memory.need(batch), "measured": measured,
                  "per_sample": memory.per_sample, "fixed": memory.fixed}))
"""


def measure(case: tuple, model_path: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, *map(str, case), model_path],
                         capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        sys.exit(f"{case}: the measuring process failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from edge_calib.core.fileio import write_bytes_atomic, write_json_atomic
    from edge_calib.core.provenance import capture, git_commit

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for train_memory.json and .md")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--onnx-model", default=str(ROOT.parent / "shared" / "data" / "models" /
                                                 "mnist-8.onnx"))
    args = ap.parse_args()
    rows = []
    for case in CASES:
        runs = [measure(case, args.onnx_model) for _ in range(args.repeats)]
        mib = {k: statistics.median(r[k] for r in runs) / 2**20
               for k in ("estimate", "measured", "per_sample", "fixed")}
        rows.append({"model": case[0], "input": f"{case[2]}x{case[3]}x{case[4]}",
                     "batch": case[5], "runs": runs,
                     **{f"{k}_mib": round(v, 1) for k, v in mib.items()},
                     "ratio": round(mib["estimate"] / mib["measured"], 2)})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "runs"}), flush=True)
    sha, dirty = git_commit(ROOT)
    out = Path(args.out)
    write_json_atomic(out / "train_memory.json", {
        "command": "python " + " ".join(sys.argv), "commit": sha, "uncommitted_changes": dirty,
        "machine": capture(1), "rows": rows})
    lines = ["| model | input (CxHxW) | batch | estimate (MiB) | measured peak increase (MiB) | "
             "estimate / measured |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['input']} | {r['batch']} | {r['estimate_mib']:.0f} | "
              f"{r['measured_mib']:.0f} | {r['ratio']:.2f} |" for r in rows]
    write_bytes_atomic(out / "train_memory.md", (
        "# A training step's memory: the check's estimate against two real steps\n\n"
        f"`python {' '.join(sys.argv)}` at {sha[:7]}; medians of {args.repeats} fresh "
        "processes, one thread each.\n\n" + "\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main()
