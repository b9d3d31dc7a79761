#!/usr/bin/env python3
"""Bring your own model: a corpus of real ONNX files from the exporters users have, each taken
through the whole path a user takes (import -> calibrator training -> export -> eval --deploy
-> run), with the conversion check and the end-to-end result per model.

    python benchmarks/import_corpus.py [--work DIR]

The corpus: one small CNN trained on real MNIST digits (one epoch, so its predictions mean
something), exported by torch.onnx at opsets 9-18 in the ways networks flatten and pool
(view, flatten, reshape, adaptive pooling, Gemm vs MatMul, fixed or dynamic batch); quantised
by ONNX Runtime's own quantiser (static QDQ per tensor and per channel, dynamic); wrapped for
NHWC input with onnx.helper; written the IR-3 way (initialisers listed as inputs, opset 8); and
the ONNX model zoo's mnist-8 (CNTK, opset 8, IR 3) from ``../shared/data/models``. The tests
(``tests/test_import_corpus.py``) build the same corpus. Writes
``benchmarks/results/import/corpus.{json,md}``.
"""

from __future__ import annotations

import argparse
import io
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "import"
MEAN, STD = 0.5, 0.5  # the corpus CNN's input: grey 28x28, (pixel / 255 - 0.5) / 0.5


@dataclass
class CorpusModel:
    name: str
    path: Path
    producer: str
    opset: int
    ir_version: int
    what: str
    mean: float = MEAN
    std: float = STD


def _net(head: str, pool: str, seed: int = 0):
    """A small MNIST CNN, its initial weights drawn from ``seed`` (the corpus is the same
    whatever ran before it); ``head`` picks how it flattens (view / flatten / reshape) and
    ``pool`` how it pools (max / adaptive)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)
            self.bn = nn.BatchNorm2d(16)
            self.flat = 16 * 7 * 7 if pool == "adaptive" else 16 * 4 * 4
            self.fc1 = nn.Linear(self.flat, 32)
            self.w2 = nn.Parameter(torch.randn(32, 10) * 0.1)
            self.b2 = nn.Parameter(torch.zeros(10))

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.c1(x)), 2)
            x = F.relu(self.bn(self.c2(x)))
            x = F.adaptive_avg_pool2d(x, 7) if pool == "adaptive" else F.max_pool2d(x, 3)
            if head == "view":
                x = x.view(x.size(0), -1)
            elif head == "flatten":
                x = torch.flatten(x, 1)
            else:
                x = x.reshape(-1, self.flat)
            x = F.relu(self.fc1(x))
            return torch.matmul(x, self.w2) + self.b2  # MatMul + Add, not Gemm

    torch.manual_seed(seed)
    return Net()


def _normalised(images: np.ndarray) -> np.ndarray:
    """uint8 grey digits (N, 28, 28[, 1]) -> float32 (N, 1, 28, 28) in the corpus CNN's units."""
    grey = images.reshape(len(images), 28, 28)
    return ((grey.astype(np.float32) / 255 - MEAN) / STD)[:, None]


def _train(net, images: np.ndarray, labels: np.ndarray, seed: int = 0):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    x = torch.from_numpy(_normalised(images))
    y = torch.from_numpy(labels.astype(np.int64))
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    net.train()
    for i in torch.randperm(len(x)).split(64):
        loss = F.cross_entropy(net(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def _export(net, path: Path, opset: int, dynamic: bool = True) -> Path:
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 1, 28, 28),), buf, dynamo=False,
                          opset_version=opset, input_names=["digits"], output_names=["scores"],
                          dynamic_axes={"digits": {0: "n"}, "scores": {0: "n"}} if dynamic
                          else None)
    path.write_bytes(buf.getvalue())
    return path


def _quantise_static(src: Path, out: Path, images: np.ndarray, per_channel: bool) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            x = _normalised(images[:256])
            self.batches = iter([{"digits": x[i:i + 32]} for i in range(0, len(x), 32)])

        def get_next(self):
            return next(self.batches, None)

    # reduce_range (7-bit weights): ONNX Runtime's advice for x86 CPUs without VNNI, whose
    # u8 x s8 kernels (VPMADDUBSW) saturate in int16 otherwise; ORT's own output then is not the
    # graph's arithmetic and no conversion can agree with it (seen on an AVX2-only EPYC)
    quantize_static(str(src), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=per_channel, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, reduce_range=True)
    return out


def _quantise_dynamic(src: Path, out: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(out), weight_type=QuantType.QUInt8,
                     op_types_to_quantize=["Conv", "MatMul", "Gemm"])
    return out


def _nhwc(src: Path, out: Path) -> Path:
    """The network behind a Transpose: the file takes (N, 28, 28, 1), as tf2onnx writes."""
    import onnx
    from onnx import helper

    model = onnx.load(str(src))
    old = model.graph.input[0]
    dims = [d.dim_param or d.dim_value for d in old.type.tensor_type.shape.dim]
    new = helper.make_tensor_value_info("digits_nhwc", old.type.tensor_type.elem_type,
                                        [dims[0], dims[2], dims[3], dims[1]])
    model.graph.node.insert(0, helper.make_node("Transpose", ["digits_nhwc"], [old.name],
                                                perm=[0, 3, 1, 2]))
    model.graph.input.remove(old)
    model.graph.input.insert(0, new)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return out


def _three_outputs(src: Path, out: Path) -> Path:
    """The network with two more outputs after its scores, as multi-head exports have: the
    softmax of the scores and the hidden features before the last layer."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(src))
    scores = model.graph.output[0].name
    last = next(n for n in reversed(model.graph.node) if n.op_type == "MatMul")
    model.graph.node.append(helper.make_node("Softmax", [scores], ["probabilities"], axis=1))
    model.graph.output.extend([
        helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", 10]),
        helper.make_tensor_value_info(last.input[0], TensorProto.FLOAT, ["n", 32])])
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return out


def _ir3(src: Path, out: Path) -> Path:
    """An opset-8 export written as IR 3 writers did: every initialiser also a graph input."""
    import onnx
    from onnx import helper

    model = onnx.load(str(src))
    model.ir_version = 3
    listed = {v.name for v in model.graph.input}
    for init in model.graph.initializer:
        if init.name not in listed:
            model.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type,
                                                                   list(init.dims)))
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return out


def build_corpus(folder: Path, data_root: Path) -> list[CorpusModel]:
    """Every corpus model, written under ``folder``."""
    import onnx

    from edge_calib.data import load_dataset

    folder.mkdir(parents=True, exist_ok=True)
    train = load_dataset("mnist", "train", data_root).subset(3000)
    nets = {(head, pool): _train(_net(head, pool), train.images, train.labels)
            for head, pool in (("view", "max"), ("flatten", "max"), ("reshape", "adaptive"))}
    exports = [("torch-opset9-view", ("view", "max"), 9, True, "view, Gemm, MatMul"),
               ("torch-opset11-flatten-fixed-batch", ("flatten", "max"), 11, False,
                "flatten, fixed batch of 1"),
               ("torch-opset13-view", ("view", "max"), 13, True, "view (Shape/Gather/Reshape)"),
               ("torch-opset17-adaptive-reshape", ("reshape", "adaptive"), 17, True,
                "adaptive average pooling, reshape"),
               ("torch-opset18-adaptive-reshape", ("reshape", "adaptive"), 18, True,
                "adaptive average pooling, reshape")]
    corpus = []
    for name, key, opset, dynamic, what in exports:
        path = _export(nets[key], folder / f"{name}.onnx", opset, dynamic)
        corpus.append(CorpusModel(name, path, "pytorch", opset, onnx.load(str(path)).ir_version,
                                  what))
    base = folder / "torch-opset13-view.onnx"
    derived = [
        ("ort-static-qdq-per-tensor", lambda p: _quantise_static(base, p, train.images, False),
         "onnxruntime.quantization", "static QDQ, per-tensor weights (uint8 activations)"),
        ("ort-static-qdq-per-channel", lambda p: _quantise_static(base, p, train.images, True),
         "onnxruntime.quantization", "static QDQ, per-channel weights"),
        ("ort-dynamic", lambda p: _quantise_dynamic(base, p), "onnxruntime.quantization",
         "dynamic: DynamicQuantizeLinear, ConvInteger, MatMulInteger"),
        ("nhwc-transpose", lambda p: _nhwc(base, p), "onnx.helper",
         "NHWC input (N, 28, 28, 1), Transpose to NCHW inside"),
        ("three-outputs", lambda p: _three_outputs(base, p), "onnx.helper",
         "three outputs (scores, their softmax, the hidden features); the first is used"),
        ("ir3-opset8", lambda p: _ir3(_export(nets[("view", "max")], folder / "o8.onnx", 8), p),
         "pytorch + onnx.helper", "IR 3, initialisers listed as graph inputs"),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, make, producer, what in derived:
            path = make(folder / f"{name}.onnx")
            model = onnx.load(str(path))
            opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
            corpus.append(CorpusModel(name, path, producer, opset, model.ir_version, what))
    zoo = data_root / "models" / "mnist-8.onnx"
    if zoo.is_file():
        corpus.append(CorpusModel("onnx-zoo-mnist-8", zoo, "CNTK 2.5.1 (ONNX model zoo)", 8, 3,
                                  "the zoo's MNIST CNN; pixels in [0, 1]", mean=0.0, std=1.0))
    return corpus


def edge_calib(args: list, cwd: Path) -> tuple[dict | None, str | None]:
    """One CLI call in a subprocess: (its last output line parsed as JSON, None), or (None,
    its error line)."""
    proc = subprocess.run(["edge-calib", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0:
        return None, (proc.stderr.strip().splitlines() or ["?"])[-1]
    return (json.loads(lines[-1]) if lines else {}), None


def whole_path(model: CorpusModel, work: Path, data_root: Path, video: Path, cli=edge_calib,
               images: int = 512) -> dict:
    """import -> train -> export -> eval --deploy -> run for one corpus model; ``cli(args,
    cwd)`` runs one command (a subprocess by default); ``images`` per training domain and
    scored."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    row = {"model": model.name, "producer": model.producer, "opset": model.opset,
           "ir_version": model.ir_version, "what": model.what}
    spec = ["--mean", model.mean, "--std", model.std]
    r, error = cli(["import-model", model.path, *spec, "--check-dataset", "mnist",
                    "--data-root", data_root, "--out", "m.pt"], work)
    if error:
        return row | {"import": error, "end_to_end": False}
    check = r["conversion_check"]["mnist"]
    row |= {"import": "ok", "graph_layout": r["graph_layout"], "quantised": r["int8_graph"],
            "parity_max_abs_diff": check["max_abs_diff"],
            "parity_relative_diff": check["relative_diff"],
            "parity_top1": check["same_argmax"]}
    steps = [
        ("train", ["train", "--classifier", "m.pt", "--source", "mnist", "--target",
                   "mnist:lowlight", "--domain", "lowlight", "--out", "c.calib.pt", "--epochs", 1,
                   "--max-samples", images, "--batch-size", 64, "--calibrator-arch", "curve",
                   "--objective", "stats", "--lr", "3e-3", "--eps", "1.0", "--quiet",
                   "--data-root", data_root]),
        ("export", ["export", "--classifier", "m.pt", "--calibrator", "lowlight=c.calib.pt",
                    "--calibrator", "mnist=identity", "--no-auto-domain", "--quiet", "--force",
                    "--data-root", data_root, "--out", "bundle"]),
        ("eval_deploy", ["eval", "--deploy", "bundle", "--domain", "lowlight", "--dataset",
                         "mnist:lowlight", "--max-samples", images, "--json", "--data-root",
                         data_root]),
        ("eval_torch", ["eval", "--classifier", "m.pt", "--calibrator", "c.calib.pt",
                        "--dataset", "mnist:lowlight", "--max-samples", images, "--json",
                        "--data-root", data_root]),
        ("run", ["run", "--input", video, "--deploy", "bundle", "--domain", "lowlight",
                 "--headless", "--json"]),
    ]
    for name, args in steps:
        r, error = cli(args, work)
        if error:
            return row | {name: error, "end_to_end": False}
        row[name] = r
    row["fusion"] = json.loads((work / "bundle" / "manifest.json").read_text())["classifier"][
        "metrics"].get("fusion")
    row["deployed_accuracy"] = row["eval_deploy"]["accuracy"]
    row["torch_accuracy"] = row["eval_torch"]["accuracy"]
    row["run_frames"] = row["run"].get("frames")
    row["end_to_end"] = True
    for name, _ in steps:
        row.pop(name)
    return row


def write_report(rows: list[dict], command: str) -> None:
    """corpus.json (the rows, the command, the machine and commit) and corpus.md (the table),
    each written atomically."""
    from edge_calib.core.fileio import write_bytes_atomic, write_json_atomic
    from edge_calib.core.provenance import capture

    write_json_atomic(RESULTS / "corpus.json", {"command": command, "provenance": capture(),
                                                "models": rows})
    lines = ["| model | producer | opset | IR | parity on 32 real MNIST images (max abs, "
             "% of range, top-1) | end to end | deployed / torch accuracy, calibrated "
             "mnist:lowlight | fusion |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        parity = (f"{r['parity_max_abs_diff']:.2g}, {100 * r['parity_relative_diff']:.2g}%, "
                  f"{100 * r['parity_top1']:.0f}%" if "parity_top1" in r else r["import"])
        acc = (f"{r['deployed_accuracy']:.1f} / {r['torch_accuracy']:.1f}"
               if r.get("end_to_end") else "")
        lines.append(f"| {r['model']} | {r['producer']} | {r['opset']} | {r['ir_version']} | "
                     f"{parity} | {'yes' if r.get('end_to_end') else 'no'} | {acc} | "
                     f"{r.get('fusion', '')} |")
    lines.append(f"\n`{command}`; machine and commit in `corpus.json`.")
    write_bytes_atomic(RESULTS / "corpus.md", ("\n".join(lines) + "\n").encode())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from edge_calib.data import load_dataset
    from edge_calib.runtime.testvideo import write_domain_video

    work = Path(args.work or tempfile.mkdtemp(prefix="corpus-"))
    data_root = Path(args.data_root).resolve()
    corpus = build_corpus(work / "models", data_root)
    m = load_dataset("mnist:lowlight", "test", data_root)
    video = work / "lowlight.avi"
    write_domain_video(video, [("lowlight", m.images[:40], m.labels[:40])])
    rows = []
    for model in corpus:
        rows.append(whole_path(model, work / model.name, data_root, video))
        print(json.dumps({k: v for k, v in rows[-1].items() if not isinstance(v, dict)}),
              flush=True)
    write_report(rows, shlex.join(["python", "benchmarks/import_corpus.py", *sys.argv[1:]]))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
