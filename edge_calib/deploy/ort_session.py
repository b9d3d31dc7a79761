"""ONNX graphs' image input and output, and ONNX Runtime sessions on the CPU, for every layer
that reads or runs a graph: the engines, the import parity check, the exporter and the bundle's
own checks (the layer below models/, export/ and engines/; no torch)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..core.errors import EdgeCalibError

if TYPE_CHECKING:
    import onnxruntime as ort


def graph_inputs(graph) -> list:
    """The inputs of an ``onnx.GraphProto`` that are fed, not weights (an IR-3 graph also lists
    its initialisers as inputs)."""
    inits = {i.name for i in graph.initializer}
    return [v for v in graph.input if v.name not in inits]


def graph_io(model) -> tuple[str, str]:
    """(image input name, first output name) of an ``onnx.ModelProto``: ours are input/logits,
    an imported model's are its own."""
    return graph_inputs(model.graph)[0].name, model.graph.output[0].name


def make_session(path, threads: int = 0, model: bytes | None = None) -> ort.InferenceSession:
    """A CPU session of the graph at ``path``, or of the serialised ``model`` (``path`` then
    only names it in errors)."""
    import onnxruntime as ort  # imported when a session is made, not with graph_io

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path) if model is None else model, options,
                                    providers=["CPUExecutionProvider"])
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
