"""The runtime's view of a bundle's engines: ``infer(domain, x) -> (logits, stage ms)``,
whichever backend holds them. All domains are loaded at start; a switch is a dictionary
lookup, never a reload or rebuild."""

from __future__ import annotations

from ..bundle import Bundle
from ..errors import EdgeCalibError


def load_engines(bundle: Bundle, backend: str, threads: int = 0):
    if backend == "onnxruntime":
        from ..engines.onnxruntime_backend import OrtEngines

        return OrtEngines(bundle, threads=threads, fused=False)
    if backend == "tensorrt":
        from ..engines.tensorrt_backend import TrtChain, device_key

        key, description = device_key()
        entry = bundle.manifest.get("engines", {}).get("tensorrt", {}).get(key)
        if entry is None or entry.get("fused"):
            raise EdgeCalibError(f"the bundle has no separate TensorRT engines for {description}; "
                                 f"run `edge-calib build-engine --deploy {bundle.root} --backend "
                                 "tensorrt --separate` on this device")
        plans = {d: None if p is None else bundle.path(p) for d, p in entry["domains"].items()}
        return TrtChain(bundle.path(entry["classifier"]), plans, tuple(bundle.spec.shape),
                        len(bundle.labels))
    raise EdgeCalibError(f"unknown backend {backend!r}; choose onnxruntime or tensorrt")
