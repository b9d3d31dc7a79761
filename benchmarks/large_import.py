"""A large imported model through `train` at the default settings: a MobileNetV2 (the paper's
layout, 3.5 M parameters, 224x224, 1000 classes, random weights) exported by torch with a fixed
batch of 1, statically quantised by ONNX Runtime's quantiser (QDQ, per-channel weights,
calibrated on 32 CamVid day frames; ``--quantisation dynamic``: dynamically quantised, which
the interpreter runs one frame at a time), imported with `import-model`, then a calibrator trained
against it with `train --epochs 1` and every other option at its default (CamVid's day and
dusk training frames as image folders, resized to 224x224); then the same training under a
stated budget of 8 GiB (``EDGE_CALIB_TRAIN_MEMORY``). Recorded: what each command printed, its
exit status, wall time and peak resident memory (each command forked from a small spawner, as
in ``bad_inputs.py``), and the batch the memory check chose.

    python benchmarks/large_import.py --work runs/large_import --out benchmarks/results/large_import
    python benchmarks/large_import.py --work runs/large_import --quantisation dynamic \
        --out benchmarks/results/large_import_dynamic
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bad_inputs import run_measured  # noqa: E402

# MobileNetV2 (Sandler et al. 2018, table 2): expansion t, channels c, repeats n, stride s
INVERTED_RESIDUALS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                      (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def mobilenet_v2(classes: int = 1000):
    import torch.nn as nn

    def conv(cin, cout, k=3, stride=1, groups=1, act=True):
        layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(cout)]
        return layers + ([nn.ReLU6(inplace=True)] if act else [])

    class Block(nn.Module):
        def __init__(self, cin, cout, stride, t):
            super().__init__()
            hidden = cin * t
            self.residual = stride == 1 and cin == cout
            self.body = nn.Sequential(*(conv(cin, hidden, 1) if t != 1 else []),
                                      *conv(hidden, hidden, 3, stride, hidden),
                                      *conv(hidden, cout, 1, act=False))

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    layers, cin = conv(3, 32, 3, 2), 32
    for t, c, n, s in INVERTED_RESIDUALS:
        for i in range(n):
            layers.append(Block(cin, c, s if i == 0 else 1, t))
            cin = c
    layers += [*conv(cin, 1280, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Linear(1280, classes)]
    return nn.Sequential(*layers)


def build_model(work: Path, data_root: str, quantisation: str = "static") -> Path:
    """The exported float graph, then its static QDQ or its dynamic quantisation (skipped when
    already there)."""
    import numpy as np
    import torch
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    from edge_calib.data import load_dataset

    quantised = work / f"mobilenet_v2_{QUANTISED[quantisation][0]}.onnx"
    if quantised.exists():
        return quantised
    float_path = work / "mobilenet_v2.onnx"
    if not float_path.exists():
        torch.manual_seed(0)
        torch.onnx.export(mobilenet_v2().eval(), torch.randn(1, 3, 224, 224), str(float_path),
                          opset_version=13, input_names=["image"], output_names=["logits"],
                          dynamo=False)
    if quantisation == "dynamic":
        from onnxruntime.quantization import quantize_dynamic

        quantize_dynamic(str(float_path), str(quantised), weight_type=QuantType.QUInt8,
                         op_types_to_quantize=["Conv", "MatMul", "Gemm"])
        return quantised
    frames = load_dataset("camvid:day", "train", data_root).images[:32]
    import cv2
    batch = np.stack([cv2.resize(f, (224, 224), interpolation=cv2.INTER_AREA) for f in frames])
    batch = ((batch.astype(np.float32) / 255 - 0.5) / 0.5).transpose(0, 3, 1, 2)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"image": x[None]} for x in batch])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(float_path), str(quantised), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return quantised


def frame_folders(work: Path, data_root: str) -> tuple[Path, Path]:
    """CamVid's day and dusk training frames as plain image folders (a user's unlabelled
    frames; the datasets carry masks, which a classifier's monitor refuses)."""
    import cv2

    from edge_calib.data import load_dataset

    folders = []
    for domain in ("day", "dusk"):
        folder = work / f"{domain}_frames"
        if not folder.is_dir():
            folder.mkdir()
            for i, frame in enumerate(load_dataset(f"camvid:{domain}", "train", data_root).images):
                cv2.imwrite(str(folder / f"{i:04d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        folders.append(folder)
    return folders[0], folders[1]


BUDGET = 8 << 30
QUANTISED = {"static": ("qdq", "QDQ per-channel"),
             "dynamic": ("dynamic", "dynamic (DynamicQuantizeLinear, ConvInteger)")}


def step(name: str, args: list, work: Path, data_root: str, env: dict | None = None) -> dict:
    started = time.time()
    proc, peak_mb = run_measured(["edge-calib", *map(str, args), "--data-root", data_root], work,
                                 os.environ | {"EDGE_CALIB_OFFLINE": "1"} | (env or {}), None,
                                 timeout=7200)
    shown = " ".join(f"{k}={v}" for k, v in (env or {}).items())
    record = {"step": name, "command": (shown + " " if shown else "") + "edge-calib "
              + " ".join(map(str, args)),
              "exit": proc.returncode, "seconds": round(time.time() - started, 1),
              "peak_rss_mb": peak_mb, "stdout": proc.stdout.strip().splitlines()[-3:],
              "stderr": [ln for ln in proc.stderr.splitlines() if ln.strip()][-8:]}
    print(json.dumps(record), flush=True)
    return record


def trained_batch(out: Path, record: dict) -> int | None:
    """The batch size the calibrator in ``out`` trained at (None when the step failed)."""
    from edge_calib.models.store import load_calibrator

    return load_calibrator(out).meta.training.batch_size if record["exit"] == 0 else None


def main() -> None:
    from edge_calib.core.fileio import write_bytes_atomic, write_json_atomic
    from edge_calib.core.provenance import capture, git_commit

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quantisation", choices=list(QUANTISED), default="static")
    ap.add_argument("--data-root", default=os.environ.get(
        "EDGE_CALIB_DATA", str(ROOT.parent / "shared" / "data")))
    args = ap.parse_args()
    work, data_root = Path(args.work).resolve(), str(Path(args.data_root).resolve())
    work.mkdir(parents=True, exist_ok=True)
    model = build_model(work, data_root, args.quantisation)
    imported = model.with_suffix(".pt")
    steps = [step("import", ["import-model", model, "--check-dataset", "camvid:day", "--out",
                             imported], work, data_root)]
    day, dusk = frame_folders(work, data_root)
    train = ["train", "--classifier", imported, "--source", day, "--target", dusk, "--domain",
             "dusk", "--out", work / "dusk.calib.pt", "--epochs", "1", "--force", "--quiet"]
    if steps[-1]["exit"] == 0:
        # at the defaults, then under a stated budget, as on a machine with 8 GiB free: the
        # peak stays under it (the check lowers the batch; scoring and cached logits go in
        # chunks of it)
        for name, env in (("train", None),
                          ("train, 8 GiB budget", {"EDGE_CALIB_TRAIN_MEMORY": str(BUDGET)})):
            steps.append(step(name, train, work, data_root, env))
            steps[-1]["batch_size"] = trained_batch(work / "dusk.calib.pt", steps[-1])
    notes = [ln for s in steps for ln in s["stderr"] if ln.startswith("note: the default")]
    sha, dirty = git_commit(ROOT)
    result = {"command": "python " + " ".join(sys.argv), "commit": sha,
              "uncommitted_changes": dirty, "machine": capture(), "model": {
                  "name": "MobileNetV2 224x224, 1000 classes, "
                          f"{QUANTISED[args.quantisation][1]} (random weights)",
                  "bytes": model.stat().st_size}, "steps": steps, "batch_note": notes}
    out = Path(args.out)
    write_json_atomic(out / "large_import.json", result)
    rows = [f"| {s['step']} | `{s['command']}` | {s['exit']} | {s['seconds']} | "
            f"{s.get('batch_size') or ''} | {s['peak_rss_mb']} |" for s in steps]
    write_bytes_atomic(out / "large_import.md", (
        "# A quantised 224x224 MobileNetV2 imported and trained at the default settings\n\n"
        f"`{result['command']}` at {sha[:7]}; the model: {result['model']['name']}, "
        f"{result['model']['bytes']:,} bytes.\n\n| step | command | exit | seconds | "
        "batch trained at | peak memory (MB) |\n|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        + "".join(f"The memory check: {n}\n\n" for n in notes)).encode())


if __name__ == "__main__":
    main()
