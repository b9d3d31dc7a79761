"""``edge-calib import-model``: a user's ONNX network as a frozen classifier checkpoint.

The file is checked (onnx checker; one NCHW image input with 1 or 3 channels, fixed or dynamic
batch; an output per class, or per class and pixel for a segmenter), converted for training
(``onnx_import.OnnxModule``) and the conversion verified against ONNX Runtime on random inputs
and, when given, real images: the largest |difference| is stated in the checkpoint's metrics.
The checkpoint carries the file byte for byte; its fingerprint is the file's sha256.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import torch

from ..errors import EdgeCalibError
from ..spec import InputSpec
from .store import Classifier

TOLERANCE = 1e-3  # a float graph's conversion must agree with ONNX Runtime to this


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def import_onnx(path: str | Path, task: str, spec: InputSpec, labels: list[str] | None,
                check_images: np.ndarray | None = None, check_name: str | None = None
                ) -> Classifier:
    from ..engines.onnxruntime_backend import run_session
    from ..int8 import count_qdq
    from .onnx_import import OnnxModule

    path = Path(path)
    if not path.is_file():
        raise EdgeCalibError(f"{path}: no such ONNX file")
    data = path.read_bytes()
    try:
        model = onnx.load_from_string(data)
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises several types for a broken file
        raise EdgeCalibError(f"{path}: not a valid ONNX model ({_first_line(exc)})") from None
    inits = {i.name for i in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in inits]
    if len(inputs) != 1:
        raise EdgeCalibError(f"{path}: {len(inputs)} inputs; edge-calib needs exactly one image "
                             "input")
    dims = [d.dim_value or None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1] not in (1, 3):
        raise EdgeCalibError(f"{path}: input {inputs[0].name} is shaped {dims}; edge-calib needs "
                             "an NCHW image input with 1 or 3 channels")
    if dims[1] != spec.channels:
        raise EdgeCalibError(f"{path}: the model takes {dims[1]} channels, the input spec says "
                             f"{spec.channels}")
    for axis, want in ((2, spec.height), (3, spec.width)):
        if dims[axis] is not None and dims[axis] != want:
            raise EdgeCalibError(f"{path}: the model's input is {dims[2]}x{dims[3]}, not "
                                 f"--input-size {spec.height}x{spec.width}")
    module = OnnxModule(model).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    import onnxruntime as ort

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    batch = dims[0] or 2
    rng = np.random.default_rng(0)
    lo, hi = np.array(spec.lo).reshape(1, -1, 1, 1), np.array(spec.hi).reshape(1, -1, 1, 1)
    checks = {"random": (rng.uniform(0, 1, (batch, *spec.shape)) * (hi - lo) + lo)
              .astype(np.float32)}
    if check_images is not None:
        checks[check_name or "images"] = spec.preprocess(check_images[:8 - 8 % batch or batch])
    qdq = count_qdq(model) > 0
    report = {}
    for name, x in checks.items():
        reference = run_session(session, x)
        with torch.no_grad():
            got = torch.cat([module(torch.from_numpy(x[i:i + batch]))
                             for i in range(0, len(x), batch)]).numpy()
        if reference.shape != got.shape:
            raise EdgeCalibError(f"{path}: the converted graph gives {got.shape}, ONNX Runtime "
                                 f"{reference.shape}")
        diff = float(np.abs(reference - got).max())
        report[name] = {"max_abs_diff": diff,
                        "same_argmax": float((reference.argmax(1) == got.argmax(1)).mean())}
        if not qdq and not diff <= TOLERANCE:
            raise EdgeCalibError(f"{path}: the converted graph differs from ONNX Runtime by "
                                 f"{diff:.2e} on {name} inputs (tolerance {TOLERANCE})")
        classes = reference.shape[1]
    expected_rank = 4 if task == "segmentation" else 2
    if reference.ndim != expected_rank:
        raise EdgeCalibError(f"{path}: output shaped {list(reference.shape)}: a {task} model "
                             f"gives {'(N, K, H, W)' if expected_rank == 4 else '(N, K)'}")
    labels = labels or [str(i) for i in range(classes)]
    if len(labels) != classes:
        raise EdgeCalibError(f"{path}: the model has {classes} outputs per sample, but "
                             f"{len(labels)} labels were given")
    metrics = {"imported_from": path.name, "onnx_sha256": hashlib.sha256(data).hexdigest(),
               "conversion_check": report,
               "int8_graph": qdq, "opset": module.opset}
    return Classifier(module, "onnx", spec, classes, labels,
                      {"imported": True, "int8": qdq, "folded": False}, metrics, None, data,
                      task)
