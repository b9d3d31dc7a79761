"""ONNX Runtime sessions on the CPU, for every layer that runs a graph: the engines, the import
parity check and the bundle's own checks (the layer below models/, export/ and engines/)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from .errors import EdgeCalibError


def make_session(path, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise EdgeCalibError(f"{path}: ONNX Runtime cannot load it "
                             f"({str(exc).splitlines()[0][:160]})") from None


def run_session(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    """The first output for input ``x``, whatever the graph calls its input (an imported
    model's own name), one sample at a time where the graph's batch is fixed."""
    spec = session.get_inputs()[0]
    batch = spec.shape[0] if spec.shape and isinstance(spec.shape[0], int) else None
    if batch is not None and batch != len(x):
        if len(x) % batch:
            raise EdgeCalibError(f"the graph takes batches of {batch}, got {len(x)} images")
        return np.concatenate([session.run(None, {spec.name: x[i:i + batch]})[0]
                               for i in range(0, len(x), batch)])
    return session.run(None, {spec.name: x})[0]
