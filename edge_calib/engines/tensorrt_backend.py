"""TensorRT through Polygraphy (NVIDIA's ONNX/TensorRT toolkit): building engines from the
bundle's ONNX graphs and running them with Polygraphy's ``TrtRunner``.

NOT EXERCISED HERE: no TensorRT and no NVIDIA GPU were available where edge-calib was
developed. What stays ours is small and pure: which ONNX variant and builder flags a precision
needs on a TensorRT version (``precision_plan``), which precisions a bundle can honour
(``check_precision``), what identifies a built engine (``engine_key``: GPU, compute capability,
TensorRT version, precision, sparsity, DLA core, batch profile, workspace and the ONNX file's
sha256), and the runner interface. Polygraphy does the rest: parsing, the builder
configuration (precision flags, 2:4 sparse weights, DLA with GPU fallback, memory-pool limit,
optimisation profile, timing cache), serialisation, device buffers, the CUDA stream (the CUDA
runtime API's primary context, current on any thread: no pycuda, no per-thread context).

Precision: explicit Q/DQ INT8 is the one path that works on every version. FP16/INT8 builder
flags exist up to 10.x; 11.x networks are strongly typed, so FP16 comes from an ONNX graph that
is already FP16 inside (the bundle's ``*.fp16.onnx`` variants) and INT8 only from Q/DQ nodes.
TensorRT's IInt8*Calibrator classes (implicit INT8 scale calibration) are never used.
Polygraphy's builder needs TensorRT >= 8.5 (JetPack 5 and 6; JetPack 4 / the original Nano,
with Python 3.6 and TensorRT 8.2, is not supported).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import EdgeCalibError
from ..deploy.ort_session import graph_inputs
from . import Engines

PRECISIONS = ("fp32", "fp16", "int8")


def import_tensorrt():
    """tensorrt and Polygraphy, or one line saying what to install."""
    try:
        import tensorrt
    except ImportError:
        raise EdgeCalibError("the tensorrt backend needs the 'tensorrt' Python package, which is "
                             "not installed (JetPack ships it: create the venv with "
                             "--system-site-packages; on a desktop `pip install tensorrt`)") from None
    try:
        import polygraphy  # noqa: F401
    except ImportError:
        raise EdgeCalibError("the tensorrt backend needs Polygraphy: pip install "
                             "'edge-calib[tensorrt]'") from None
    return tensorrt


def parse_version(text: str) -> tuple[int, int, int]:
    match = re.match(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", text or "")
    if not match:
        raise EdgeCalibError(f"unrecognised TensorRT version {text!r}")
    return tuple(int(g or 0) for g in match.groups())


@dataclass(frozen=True)
class TrtFeatures:
    """What the installed TensorRT offers, from its version alone."""

    version: tuple[int, int, int]

    @property
    def supported(self) -> bool:  # Polygraphy's builder needs 8.5
        return self.version >= (8, 5, 0)

    @property
    def precision_flags(self) -> bool:  # BuilderFlag.FP16 / INT8, removed in 11
        return self.version < (11, 0, 0)

    @property
    def strongly_typed_only(self) -> bool:
        return self.version >= (11, 0, 0)


def precision_plan(precision: str, features: TrtFeatures) -> dict:
    """Which builder flags to set and which ONNX variant to parse for a precision.

    ``classifier``/``calibrator`` name the bundle variant: ``fp32``, ``fp16`` (FP16 inside,
    FP32 I/O) or ``qdq`` (explicit INT8 Q/DQ in TensorRT's pattern).
    """
    if precision not in PRECISIONS:
        raise EdgeCalibError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if features.precision_flags:
        flags = {"fp32": [], "fp16": ["FP16"], "int8": ["INT8", "FP16"]}[precision]
        return {"flags": flags, "classifier": "qdq" if precision == "int8" else "fp32",
                "calibrator": "fp32", "strongly_typed": False}
    low = "fp32" if precision == "fp32" else "fp16"
    return {"flags": [], "classifier": "qdq" if precision == "int8" else low,
            "calibrator": low, "strongly_typed": True}


def check_precision(bundle_precision: str, requested: str | None) -> str:
    """The precision to build: an INT8 bundle builds INT8 only (its Q/DQ graph); a float
    bundle builds FP32 or FP16, never INT8 (it has no Q/DQ scales)."""
    requested = requested or bundle_precision
    if requested not in PRECISIONS:
        raise EdgeCalibError(f"unknown precision {requested!r}; choose one of {', '.join(PRECISIONS)}")
    if bundle_precision == "int8" and requested != "int8":
        raise EdgeCalibError(f"this bundle's classifier is INT8 (Q/DQ): it builds as int8, not "
                             f"{requested}; export the float classifier for a {requested} engine")
    if bundle_precision != "int8" and requested == "int8":
        raise EdgeCalibError("this bundle's classifier is float: INT8 needs an INT8 bundle "
                             "(`edge-calib compress --int8`, then `edge-calib export`)")
    return requested


def onnx_variant(files: dict, variant: str) -> str:
    """The bundle file for a plan variant (``fp32``, ``fp16`` or ``qdq``)."""
    if variant == "fp16":
        if "tensorrt_fp16" not in files:
            raise EdgeCalibError("this bundle has no FP16 graph for a strongly typed TensorRT "
                                 "build; rebuild it with this edge-calib")
        return files["tensorrt_fp16"]
    return files["tensorrt"]


def device_key(gpu_name: str, compute_capability: tuple[int, int], trt_version: str) -> str:
    """Plans run only on the GPU model and TensorRT version they were built with."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")
    return f"{slug}_sm{compute_capability[0]}{compute_capability[1]}_trt{trt_version}"


def engine_key(device: str, settings: dict, onnx_sha256: dict[str, str]) -> str:
    """Everything that changes a plan: the device key, the build settings (precision,
    sparsity, DLA core, batch profile, workspace, fused) and the sha256 of each ONNX file."""
    identity = json.dumps({"device": device, "settings": settings, "onnx": onnx_sha256},
                          sort_keys=True)
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def gpu_identity() -> tuple[str, tuple[int, int]]:
    """(name, compute capability) of GPU 0 through the CUDA runtime Polygraphy loads."""
    from polygraphy import cuda

    lib = cuda.wrapper().handle
    major, minor = ctypes.c_int(), ctypes.c_int()
    for attribute, value in ((75, major), (76, minor)):  # cudaDevAttrComputeCapabilityMajor/Minor
        lib.cudaDeviceGetAttribute(ctypes.byref(value), attribute, 0)
    properties = ctypes.create_string_buffer(4096)  # cudaDeviceProp starts with char name[256]
    get = getattr(lib, "cudaGetDeviceProperties_v2", None) or lib.cudaGetDeviceProperties
    if get(properties, 0) != 0:
        raise EdgeCalibError("CUDA cannot describe GPU 0: is an NVIDIA GPU visible here?")
    return properties.raw[:256].split(b"\0", 1)[0].decode(), (major.value, minor.value)


def build_plan(onnx_path: Path, plan_path: Path, plan: dict, precision: str,
               shape: tuple[int, ...], batch: tuple[int, int, int], workspace_mb: int,
               sparse: bool, dla_core: int | None, timing_cache: Path) -> None:
    """Parse, configure and build one engine with Polygraphy, and write its plan."""
    trt = import_tensorrt()
    import onnx
    from polygraphy.backend.trt import (
        CreateConfig,
        EngineBytesFromNetwork,
        NetworkFromOnnxPath,
        PostprocessConfig,
        Profile,
    )

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    name = graph_inputs(graph)[0].name  # an imported model's own
    profile = Profile().add(name, min=(batch[0], *shape), opt=(batch[1], *shape),
                            max=(batch[2], *shape))
    config = CreateConfig(fp16="FP16" in plan["flags"], int8="INT8" in plan["flags"],
                          profiles=[profile], sparse_weights=sparse,
                          use_dla=dla_core is not None, allow_gpu_fallback=dla_core is not None,
                          memory_pool_limits={trt.MemoryPoolType.WORKSPACE: workspace_mb << 20},
                          load_timing_cache=str(timing_cache))
    if dla_core:  # Polygraphy picks DLA core 0
        config = PostprocessConfig(config, lambda builder, network, cfg: setattr(
            cfg, "DLA_core", dla_core))
    network = NetworkFromOnnxPath(str(onnx_path),
                                  strongly_typed=True if plan["strongly_typed"] else None)
    try:
        serialized = EngineBytesFromNetwork(network, config, save_timing_cache=str(timing_cache))()
    except Exception as exc:  # Polygraphy reports TensorRT's own errors
        raise EdgeCalibError(f"TensorRT could not build an engine from {onnx_path}: "
                             f"{str(exc).strip().splitlines()[-1][:200]}") from None
    plan_path.write_bytes(bytes(serialized))


class TrtEngines(Engines):
    """Every domain's engines as Polygraphy runners, activated once at start (the first
    execution of a context is slow: the check frame warms each one)."""

    backend = "tensorrt"

    def __init__(self, bundle, entry):
        import_tensorrt()
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        self.fused = entry.fused
        load = lambda path: TrtRunner(EngineFromBytes(bundle.path(path).read_bytes()))  # noqa: E731
        # the domains' engines apart from the classifier's: a domain may be called "classifier"
        self.classifier, self.runners = None, {}
        try:
            if entry.classifier:
                self.classifier = load(entry.classifier)
            for domain, path in entry.domains.items():
                if path:
                    self.runners[domain] = load(path)
            for runner in self._all():
                runner.activate()
        except BaseException:
            self.close()
            raise

    def _all(self) -> list:
        return [r for r in (self.classifier, *self.runners.values()) if r is not None]

    def _run(self, runner, x, to_host: bool = True):
        """One engine's output (on the device when ``to_host`` is False: the calibrator's
        output feeds the classifier without a copy) and its inference time in ms."""
        out = runner.infer({next(iter(runner.get_input_metadata())): x},
                           copy_outputs_to_host=to_host)
        return next(iter(out.values())), runner.last_inference_time() * 1e3

    def runs_fused(self, domain: str) -> bool:
        return self.fused and domain in self.runners

    def calibrate(self, domain: str, x: np.ndarray) -> np.ndarray | None:
        """The calibrator engine's output (separate engines); None for fused engines, whose
        calibrated image never leaves the graph (the bound check then needs ``--separate``)."""
        if domain not in self.runners:  # an identity domain
            return np.asarray(x)
        if self.fused:
            return None
        out, _ = self._run(self.runners[domain], np.ascontiguousarray(x, np.float32))
        return np.asarray(out)

    def infer(self, domain: str | None, x: np.ndarray) -> tuple[np.ndarray, dict]:
        x = np.ascontiguousarray(x, np.float32)
        if self.fused or domain not in self.runners:  # fused, or an identity domain
            started = time.perf_counter()
            logits, _ = self._run(self.runners.get(domain, self.classifier), x)
            return np.asarray(logits), {"network": (time.perf_counter() - started) * 1e3}
        calibrated, cal_ms = self._run(self.runners[domain], x, to_host=False)
        logits, cls_ms = self._run(self.classifier, calibrated)
        return np.asarray(logits), {"calibrator": cal_ms, "classifier": cls_ms,
                                    "network": cal_ms + cls_ms}

    def close(self) -> None:
        for runner in self._all():
            if getattr(runner, "is_active", False):
                runner.deactivate()
        self.classifier, self.runners = None, {}
        self.closed = True


def open_engines(bundle, threads: int = 0, fused: bool = True,
                 frames: bool = False) -> TrtEngines:
    """The backend's entry (``engines.Backend``): the engines this device built for the bundle
    (``build-engine --deploy``); fused or separate, whichever was built (``fused`` picks when
    both were). ``threads`` and ``frames`` are ONNX Runtime's and ignored."""
    trt = import_tensorrt()
    name, cc = gpu_identity()
    key = device_key(name, cc, trt.__version__)
    entries = [e for k, e in bundle.manifest.engines.get("tensorrt", {}).items()
               if k.startswith(key + "/")]
    if not entries:
        raise EdgeCalibError(f"the bundle has no TensorRT engines for {name} (sm {cc[0]}.{cc[1]}"
                             f", TensorRT {trt.__version__}); run `edge-calib build-engine "
                             f"--deploy {bundle.root}` on this device")
    entry = next((e for e in entries if e.fused == fused), entries[0])
    return TrtEngines(bundle, entry)


def prepare(deploy, settings: dict) -> dict:
    """Before ``open_engines`` on this device (``doctor``): build the bundle's engines for
    ``settings`` with Polygraphy, or reuse the ones cached for them; says which."""
    from .tensorrt_build import add_tensorrt_engines

    built = add_tensorrt_engines(deploy, settings)
    return {"engines": built["key"], "cached": built["cached"]}


def software() -> dict:
    """What ``doctor`` reports: TensorRT's and Polygraphy's versions and the GPU (an
    EdgeCalibError where TensorRT cannot be imported)."""
    from importlib import metadata

    trt = import_tensorrt()
    try:
        polygraphy = metadata.version("polygraphy")
    except metadata.PackageNotFoundError:
        polygraphy = None
    out = {"tensorrt": trt.__version__, "polygraphy": polygraphy}
    try:
        name, cc = gpu_identity()
        out["gpu"] = {"name": name, "compute_capability": f"{cc[0]}.{cc[1]}"}
    except Exception as exc:  # a driver or CUDA runtime that cannot be loaded
        out["gpu"] = f"not available: {str(exc).strip().splitlines()[-1][:200]}"
    return out
