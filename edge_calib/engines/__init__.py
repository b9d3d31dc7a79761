"""Inference engines on the device: one runner interface for ONNX Runtime (default, any CPU)
and TensorRT (NVIDIA), in the manner of Polygraphy's runners.

Every backend loads all of a bundle's domains at start (a switch picks another graph, never a
reload), runs either the fused calibrator -> classifier graph per domain or the two graphs in
turn, and is a context manager whose ``close()`` frees its sessions or device memory.

A backend is one ``Backend`` in ``BACKENDS`` (``register``): the CLI's ``--backend`` choices,
the profiles, ``bench`` and ``doctor`` read the registry (register before the CLI is imported).
Its module is imported only when the backend is used and provides
``open_engines(bundle, threads, fused, frames) -> Engines``, ``software() -> dict`` (what
``doctor`` reports as found; raising ImportError or EdgeCalibError where the backend cannot run
here) and, where engines must be built on the device first, ``prepare(deploy, settings) ->
dict`` (what ``doctor`` runs before opening them, as TensorRT builds its engines).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np

from ..core.errors import EdgeCalibError


@dataclass(frozen=True)
class Backend:
    """A way to run a bundle: ``name`` (``--backend NAME``), the bundle's graph ``variant`` it
    runs (each graph is exported per variant, Q/DQ placed for that runtime) and the ``module``
    that implements it (a dotted name)."""

    name: str
    variant: str
    module: str

    def implementation(self):
        return importlib.import_module(self.module)

    def open(self, bundle, threads: int = 0, fused: bool = True, frames: bool = False):
        return self.implementation().open_engines(bundle, threads=threads, fused=fused,
                                                  frames=frames)

    def software(self) -> dict:
        return self.implementation().software()

    def prepare(self, deploy, settings: dict) -> dict:
        """Build what this device needs to run the bundle (nothing for most backends)."""
        module = self.implementation()
        return module.prepare(deploy, settings) if hasattr(module, "prepare") else {}


BACKENDS: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    BACKENDS[backend.name] = backend
    return backend


def backend_named(name: str) -> Backend:
    if name not in BACKENDS:
        raise EdgeCalibError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return BACKENDS[name]


register(Backend("onnxruntime", "onnxruntime", f"{__name__}.onnxruntime_backend"))  # default
register(Backend("tensorrt", "tensorrt", f"{__name__}.tensorrt_backend"))


class Engines:
    """``infer(domain, x) -> (logits, stage ms)`` (domain None: the frozen classifier alone);
    ``calibrate(domain, x)`` for checks."""

    backend = ""
    fused = True
    closed = False  # set by close(): the sessions or device memory are freed

    def infer(self, domain: str | None, x: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        raise NotImplementedError

    def calibrate(self, domain: str, x: np.ndarray) -> np.ndarray | None:
        """The calibrated input alone, or None where the backend cannot give it."""
        return None

    def runs_fused(self, domain: str) -> bool:
        """Whether ``infer(domain, ...)`` runs one fused calibrator -> classifier graph."""
        return False

    def takes_frames(self, domain: str | None) -> bool:
        """Whether ``infer_frame`` runs this domain's graph on uint8 frames."""
        return False

    def infer_frame(self, domain: str | None, frame: np.ndarray) -> tuple[dict, dict[str, float]]:
        """uint8 frames (N, H, W, C) at the spec's size -> ({"classes", "confidence"},
        stage ms), pre- and post-processing inside the graph (see ``frame_graph.py``)."""
        raise NotImplementedError

    def release_float_sessions(self) -> None:
        """After the checks, free what only the checks needed (the runtime's frame graphs
        stay); a backend without frame graphs keeps everything."""

    def close(self) -> None:
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_engines(bundle, backend: str = "onnxruntime", threads: int = 0, fused: bool = True,
                 check: bool = True, frames: bool = False) -> Engines:
    """Every domain's engines, checked on one frame each (and warmed up by it); ``frames``:
    also the sessions that take uint8 frames (the runtime's; ONNX Runtime only for now). The
    graphs come from the bytes ``bundle.verify`` hashed, dropped once the sessions exist."""
    chosen = backend_named(backend)
    check_graph_shapes(bundle, backend)
    try:
        engines = chosen.open(bundle, threads=threads, fused=fused, frames=frames)
    finally:
        bundle.forget_graphs()
    if check:
        try:
            check_engines(engines, bundle)
        except BaseException:
            engines.close()
            raise
    return engines


def _image_shape(model, which: str) -> tuple:
    """Declared dims of an ``onnx.ModelProto``'s image input or first output (None where
    symbolic)."""
    from ..deploy.ort_session import graph_io

    name = graph_io(model)[0 if which == "input" else 1]
    value = next(v for v in (*model.graph.input, *model.graph.output) if v.name == name)
    return tuple(d.dim_value if d.HasField("dim_value") else None
                 for d in value.type.tensor_type.shape.dim)


def check_graph_shapes(bundle, backend: str = "onnxruntime") -> None:
    """Each calibrator graph takes and returns what the classifier graph takes (the batch
    dimension aside): a calibrator built for another model size is refused in one line before
    any session runs."""
    variant = backend_named(backend).variant
    wanted = _image_shape(bundle.graph(bundle.classifier_file(variant)), "input")

    def agree(got: tuple) -> bool:
        return len(got) == len(wanted) and all(
            a is None or b is None or a == b for a, b in zip(got[1:], wanted[1:]))

    def dims(shape: tuple) -> str:
        return "x".join("?" if d is None else str(d) for d in shape[1:])

    for name in bundle.domains:
        path = bundle.calibrator_file(name, variant)
        if path is None:
            continue
        graph = bundle.graph(path)
        for which in ("input", "output"):
            got = _image_shape(graph, which)
            if not agree(got):
                raise EdgeCalibError(
                    f"bundle {bundle.root}: domain {name}: the calibrator's {which} is "
                    f"{dims(got)} but the classifier takes {dims(wanted)}; rebuild the bundle "
                    "with a calibrator trained against this classifier")


def check_engines(engines: Engines, bundle, x: np.ndarray | None = None) -> None:
    """Each domain gives finite outputs of the right shape on a frame, and its calibrator
    keeps to its bound: a bundle whose graphs produce NaN is refused before it runs."""
    if x is None:
        checks = bundle.check_inputs()
        x = checks[:1] if checks is not None else np.zeros((1, *bundle.spec.shape), np.float32)
    classes = len(bundle.labels)
    for name in bundle.domains:
        logits, _ = engines.infer(name, x)
        shape_ok = logits.shape[:2] == (len(x), classes) and (
            logits.ndim == 2 or logits.shape[2:] == x.shape[2:])
        if not shape_ok or not np.all(np.isfinite(logits)):
            problem = "non-finite outputs (NaN or inf)" if shape_ok else \
                f"outputs shaped {logits.shape}"
            raise EdgeCalibError(f"bundle {bundle.root}: domain {name}: the graph gives "
                                 f"{problem} on a check frame; rebuild the bundle")
        if engines.takes_frames(name):  # the frame graph agrees with the float graph
            u8 = bundle.spec.to_uint8(x)
            want = engines.infer(name, bundle.spec.normalize(u8))[0].argmax(axis=1)
            got = engines.infer_frame(name, u8)[0]["classes"]
            if got.shape != want.shape or not np.array_equal(got, want):
                raise EdgeCalibError(f"bundle {bundle.root}: domain {name}: the frame graph's "
                                     "classes differ from the float graph's on a check frame")
        cal = bundle.calibrator(name)
        y = engines.calibrate(name, x) if cal is not None else None
        if y is not None and (not np.all(np.isfinite(y)) or np.abs(y - x).max() > cal.eps + 1e-4):
            raise EdgeCalibError(f"bundle {bundle.root}: domain {name}: the calibrator's output "
                                 "breaks its bound")
