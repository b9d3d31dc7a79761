"""ONNX Runtime engines for a bundle: the classifier, each domain's calibrator, and the fused
graphs. INT8 classifiers run as real QDQ kernels (QLinearConv / QGemm) on the CPU."""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort

from ..bundle import Bundle
from ..errors import EdgeCalibError

BACKEND = "onnxruntime"


def make_session(path, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise EdgeCalibError(f"{path}: ONNX Runtime cannot load it "
                             f"({str(exc).splitlines()[0][:160]})") from None


class OrtEngines:
    """All sessions of a bundle, created once: a domain switch only picks another session."""

    def __init__(self, bundle: Bundle, threads: int = 0, fused: bool = True):
        self.bundle = bundle
        self.classifier = make_session(bundle.classifier_file(BACKEND), threads)
        self.calibrators: dict[str, ort.InferenceSession | None] = {}
        self.fused: dict[str, ort.InferenceSession] = {}
        for name in bundle.domains:
            path = bundle.calibrator_file(name, BACKEND)
            self.calibrators[name] = None if path is None else make_session(path, threads)
            fused_path = bundle.fused_file(name, BACKEND)
            if fused and fused_path is not None:
                self.fused[name] = make_session(fused_path, threads)

    def calibrate(self, domain: str, x: np.ndarray) -> np.ndarray:
        session = self.calibrators[domain]
        return x if session is None else session.run(None, {"input": x})[0]

    def classify(self, x: np.ndarray) -> np.ndarray:
        return self.classifier.run(None, {"input": x})[0]

    def run_fused(self, domain: str, x: np.ndarray) -> np.ndarray:
        session = self.fused.get(domain)
        if session is None:
            if self.calibrators.get(domain, 0) is None:  # identity domain: the classifier alone
                return self.classify(x)
            raise EdgeCalibError(f"no fused graph for domain {domain!r} in this bundle")
        return session.run(None, {"input": x})[0]

    def logits(self, domain: str, x: np.ndarray, fused: bool = False) -> np.ndarray:
        if domain not in self.calibrators:
            raise EdgeCalibError(f"unknown domain {domain!r}; this bundle has: "
                                 f"{', '.join(self.calibrators)}")
        return self.run_fused(domain, x) if fused else self.classify(self.calibrate(domain, x))

    def infer(self, domain: str, x: np.ndarray) -> tuple[np.ndarray, dict]:
        """Logits and wall times (ms) of the calibrator and classifier sessions."""
        t0 = time.perf_counter()
        y = self.calibrate(domain, x)
        t1 = time.perf_counter()
        logits = self.classify(y)
        t2 = time.perf_counter()
        return logits, {"calibrator": (t1 - t0) * 1e3, "classifier": (t2 - t1) * 1e3}
