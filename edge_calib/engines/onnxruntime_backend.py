"""ONNX Runtime engines for a bundle: per domain the fused calibrator -> classifier graph (one
session, the default) or the calibrator and classifier sessions in turn. INT8 classifiers run
as real QDQ kernels (QLinearConv / QGemm) on the CPU. With ``frames``, the runtime's sessions
take uint8 frames and return class maps (``frame_graph.py``) for every domain that runs one
graph (fused or identity)."""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort

from ..core.errors import EdgeCalibError
from ..deploy.ort_session import make_session, run_session
from . import Engines
from .frame_graph import CLASSES, CONFIDENCE, FRAME, frame_graph

BACKEND = "onnxruntime"


class OrtEngines(Engines):
    """All sessions of a bundle, created once: a domain switch only picks another session.

    ``fused``: each calibrated domain runs its fused graph (stage ``network``); otherwise, or
    where the bundle has none (a classifier that could not be merged), the calibrator then the
    classifier (stages ``calibrator`` and ``classifier``). The calibrator
    sessions are always loaded, for ``calibrate`` and the bound check."""

    backend = BACKEND

    def __init__(self, bundle, threads: int = 0, fused: bool = True, frames: bool = False):
        self.bundle, self.fused = bundle, fused
        self.released: set[str | None] = set()  # paths whose float sessions were freed
        def session(path, model: bytes | None = None) -> ort.InferenceSession:
            return make_session(path, threads, bundle.graph_bytes(path) if model is None else model)

        self.classifier = session(bundle.classifier_file(BACKEND))
        self.calibrators: dict[str, ort.InferenceSession | None] = {}
        self.fused_sessions: dict[str, ort.InferenceSession] = {}
        self.frame_sessions: dict[str | None, ort.InferenceSession] = {}  # None: the classifier
        graphs: dict[str | None, str] = {None: bundle.classifier_file(BACKEND)}
        for name in bundle.domains:
            path = bundle.calibrator_file(name, BACKEND)
            self.calibrators[name] = None if path is None else session(path)
            fused_path = bundle.fused_file(name, BACKEND)
            if fused and fused_path is not None:
                self.fused_sessions[name] = session(fused_path)
                graphs[name] = fused_path
            elif path is None:
                graphs[name] = graphs[None]
        if frames:
            built: dict[str, ort.InferenceSession] = {}
            for name, path in graphs.items():
                if str(path) not in built:
                    try:
                        model = frame_graph(bundle.graph(path), bundle.spec, bundle.task,
                                            copy=False)  # parsed for this alone
                    except EdgeCalibError:  # a graph it cannot wrap keeps the float path
                        model = None
                    built[str(path)] = None if model is None else \
                        session(path, model.SerializeToString())
                    model = None
                    bundle.forget_graphs(path)  # its last use: the start-up peak stays lower
                if built[str(path)] is not None:
                    self.frame_sessions[name] = built[str(path)]
            self._frame_outputs = [CLASSES] if bundle.task == "segmentation" else \
                [CLASSES, CONFIDENCE]

    def release_float_sessions(self) -> None:
        """After the checks: free the float sessions of every path a frame graph runs (the
        runtime never uses them again), keeping what a domain without a frame graph needs.
        ``infer`` on a released path is then an error; ``infer_frame`` is unchanged."""
        kept = [d for d in self.calibrators if d not in self.frame_sessions]
        if None in self.frame_sessions and all(
                self.calibrators[d] is not None and d in self.fused_sessions for d in kept):
            self.classifier = None
        for name in list(self.fused_sessions):
            if name in self.frame_sessions:
                del self.fused_sessions[name]
                self.calibrators[name] = None
        self.released = set(self.frame_sessions)

    def _session(self, domain: str):
        if domain in self.released:
            raise EdgeCalibError(f"domain {domain!r}: its float graph was released after the "
                                 "checks; it runs on frames (infer_frame)")
        if domain not in self.calibrators:
            raise EdgeCalibError(f"unknown domain {domain!r}; this bundle has: "
                                 f"{', '.join(self.calibrators)}")
        return self.calibrators[domain]

    def calibrate(self, domain: str, x: np.ndarray) -> np.ndarray:
        session = self._session(domain)
        return x if session is None else run_session(session, x)

    def classify(self, x: np.ndarray) -> np.ndarray:
        return run_session(self.classifier, x)

    def logits(self, domain: str, x: np.ndarray) -> np.ndarray:
        return self.infer(domain, x)[0]

    def infer(self, domain: str | None, x: np.ndarray) -> tuple[np.ndarray, dict]:
        """Logits and wall times (ms) of the stages that ran (``None``: the classifier alone)."""
        calibrator = None if domain is None else self._session(domain)
        if domain is None and self.classifier is None:
            raise EdgeCalibError("the classifier's float graph was released after the checks; "
                                 "it runs on frames (infer_frame)")
        t0 = time.perf_counter()
        if calibrator is None or domain in self.fused_sessions:
            session = self.fused_sessions.get(domain, self.classifier)
            logits = run_session(session, x)
            return logits, {"network": (time.perf_counter() - t0) * 1e3}
        y = run_session(calibrator, x)
        t1 = time.perf_counter()
        logits = self.classify(y)
        t2 = time.perf_counter()
        return logits, {"calibrator": (t1 - t0) * 1e3, "classifier": (t2 - t1) * 1e3,
                        "network": (t2 - t0) * 1e3}

    def runs_fused(self, domain: str) -> bool:
        return domain in self.fused_sessions

    def takes_frames(self, domain: str | None) -> bool:
        return domain in self.frame_sessions

    def infer_frame(self, domain: str | None, frame: np.ndarray) -> tuple[dict, dict]:
        """uint8 frames (N, H, W, C) -> ({"classes", "confidence"}, stage ms): cast,
        normalisation and ArgMax run inside the graph."""
        session = self.frame_sessions[domain]
        t0 = time.perf_counter()
        outputs = session.run(self._frame_outputs, {FRAME: frame})
        network = (time.perf_counter() - t0) * 1e3
        return {"classes": outputs[0], "confidence": outputs[1] if len(outputs) > 1 else None}, \
            {"network": network}

    def close(self) -> None:
        self.classifier = None
        self.calibrators, self.fused_sessions, self.frame_sessions = {}, {}, {}
        self.closed = True


def open_engines(bundle, threads: int = 0, fused: bool = True,
                 frames: bool = False) -> OrtEngines:
    """The backend's entry (``engines.Backend``)."""
    return OrtEngines(bundle, threads=threads, fused=fused, frames=frames)


def software() -> dict:
    """What ``doctor`` reports: ONNX Runtime's version and execution providers."""
    return {"onnxruntime": {"version": ort.__version__,
                            "providers": ort.get_available_providers()}}
