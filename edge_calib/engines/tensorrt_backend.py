"""TensorRT engines: build from the bundle's ONNX files, cache per device, run on one stream.

Targets TensorRT 8.2 (Jetson Nano, JetPack 4.6), 8.5 (Xavier, JetPack 5), 10.x (Orin,
JetPack 6: 10.3) and 11.x (pip). NOT EXERCISED HERE: no TensorRT and no NVIDIA GPU were
available where edge-calib was developed; the pure parts (version shim, precision plan, cache
keys) are unit-tested, building and running engines are not. Importing this module never
imports tensorrt; asking for the backend without it is a one-line error.

Precision: explicit Q/DQ INT8 is the one path that works on every version. FP16/INT8 builder
flags exist up to 10.x; 11.x networks are strongly typed, so FP16 comes from an ONNX graph that
is already FP16 inside (the bundle's ``*.fp16.onnx`` variants) and INT8 only from Q/DQ nodes.
TensorRT's IInt8*Calibrator classes (implicit INT8 scale calibration) are never used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import EdgeCalibError

PRECISIONS = ("fp32", "fp16", "int8")


def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise EdgeCalibError("the tensorrt backend needs the 'tensorrt' Python package, which is "
                             "not installed (JetPack ships it; elsewhere `pip install "
                             "'edge-calib[tensorrt]'`)") from None
    return tensorrt


def parse_version(text: str) -> tuple[int, int, int]:
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    if not match:
        raise EdgeCalibError(f"unrecognised TensorRT version {text!r}")
    return tuple(int(g or 0) for g in match.groups())


@dataclass(frozen=True)
class TrtFeatures:
    """What the installed TensorRT offers, from its version alone."""

    version: tuple[int, int, int]

    @property
    def explicit_batch_flag(self) -> bool:  # required before 10.0, default afterwards
        return self.version < (10, 0, 0)

    @property
    def memory_pool_api(self) -> bool:  # set_memory_pool_limit replaced max_workspace_size
        return self.version >= (8, 4, 0)

    @property
    def tensor_io_api(self) -> bool:  # set_tensor_address + execute_async_v3
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


def cache_key(gpu_name: str, compute_capability: tuple[int, int], trt_version: str) -> str:
    """Engines are tied to the GPU and the TensorRT version: one cache folder per pair."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")
    return f"{slug}_sm{compute_capability[0]}{compute_capability[1]}_trt{trt_version}"


def build_engine(onnx_path: Path, plan_path: Path, precision: str, shape: tuple[int, int, int],
                 batch: tuple[int, int, int] = (1, 1, 8), workspace_mb: int = 256,
                 sparse: bool = False, refit: bool = False, dla_core: int | None = None,
                 timing_cache: Path | None = None) -> dict:
    """Parse ONNX, build a serialised plan with a memory-pool limit and a timing cache."""
    trt = import_tensorrt()
    feats = TrtFeatures(parse_version(trt.__version__))
    plan = precision_plan(precision, feats)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if feats.explicit_batch_flag:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EdgeCalibError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if feats.memory_pool_api:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    else:
        config.max_workspace_size = workspace_mb << 20
    for flag in plan["flags"]:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if sparse:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    if refit:
        config.set_flag(trt.BuilderFlag.REFIT)
    if dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (batch[0], *shape), (batch[1], *shape), (batch[2], *shape))
    config.add_optimization_profile(profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.exists() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EdgeCalibError(f"TensorRT failed to build an engine from {onnx_path}")
    plan_path.write_bytes(bytes(serialized))
    if timing_cache is not None:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"plan": plan_path.name, "precision": precision, "flags": plan["flags"],
            "strongly_typed": plan["strongly_typed"], "batch": list(batch), "sparse": sparse,
            "refit": refit, "dla_core": dla_core, "workspace_mb": workspace_mb}


def device_key() -> tuple[str, str]:
    """(cache key, human description) of the current GPU and TensorRT."""
    trt = import_tensorrt()
    cuda = _import_pycuda()
    dev = cuda.Device(0)
    name, cc = dev.name(), dev.compute_capability()
    return cache_key(name, cc, trt.__version__), f"{name} (sm {cc[0]}.{cc[1]}), TensorRT {trt.__version__}"


def _import_pycuda():
    try:
        import pycuda.autoinit  # noqa: F401  creates the CUDA context
        import pycuda.driver as cuda
    except ImportError:
        raise EdgeCalibError("the tensorrt backend needs 'pycuda' for device buffers "
                             "(`pip install pycuda`)") from None
    return cuda


class TrtEngine:
    """One deserialised engine with its execution context; I/O by device pointers."""

    def __init__(self, plan_path: Path, runtime, features: TrtFeatures):
        self.engine = runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
        if self.engine is None:
            raise EdgeCalibError(f"{plan_path}: TensorRT cannot deserialise this plan (built for "
                                 "another GPU or TensorRT version?)")
        self.context = self.engine.create_execution_context()
        self.features = features

    def enqueue(self, input_ptr: int, output_ptr: int, shape: tuple[int, ...], stream) -> None:
        if self.features.tensor_io_api:
            self.context.set_input_shape("input", shape)
            names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
            output = next(n for n in names if n != "input")
            self.context.set_tensor_address("input", input_ptr)
            self.context.set_tensor_address(output, output_ptr)
            self.context.execute_async_v3(stream.handle)
        else:  # TensorRT 8.2: bindings API
            self.context.set_binding_shape(0, shape)
            self.context.execute_async_v2([input_ptr, output_ptr], stream.handle)


class TrtChain:
    """Classifier engine plus every domain's calibrator engine, resident at once.

    The calibrator writes into the classifier's input buffer on the same stream: no copy and
    no host synchronisation between the two. Switching domain picks another calibrator
    context (O(1)); the identity domain enqueues the classifier alone.
    """

    def __init__(self, classifier_plan: Path, calibrator_plans: dict[str, Path | None],
                 shape: tuple[int, int, int], num_classes: int, max_batch: int = 8):
        trt = import_tensorrt()
        self.cuda = _import_pycuda()
        feats = TrtFeatures(parse_version(trt.__version__))
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.classifier = TrtEngine(classifier_plan, runtime, feats)
        self.calibrators = {d: None if p is None else TrtEngine(p, runtime, feats)
                            for d, p in calibrator_plans.items()}
        self.shape, self.max_batch = shape, max_batch
        n_in = max_batch * int(np.prod(shape)) * 4
        self.d_raw = self.cuda.mem_alloc(n_in)
        self.d_calibrated = self.cuda.mem_alloc(n_in)
        self.h_logits = self.cuda.pagelocked_empty((max_batch, num_classes), np.float32)
        self.d_logits = self.cuda.mem_alloc(self.h_logits.nbytes)
        self.stream = self.cuda.Stream()

    def infer(self, domain: str, x: np.ndarray) -> tuple[np.ndarray, dict]:
        """Logits and GPU times (ms, CUDA events) of the calibrator and classifier stages."""
        n = x.shape[0]
        if n > self.max_batch:
            raise EdgeCalibError(f"batch {n} exceeds the engine's maximum {self.max_batch}")
        x = np.ascontiguousarray(x, np.float32)
        shape = (n, *self.shape)
        start, mid, end = self.cuda.Event(), self.cuda.Event(), self.cuda.Event()
        calibrator = self.calibrators[domain]
        start.record(self.stream)
        if calibrator is None:
            self.cuda.memcpy_htod_async(self.d_calibrated, x, self.stream)
        else:
            self.cuda.memcpy_htod_async(self.d_raw, x, self.stream)
            calibrator.enqueue(int(self.d_raw), int(self.d_calibrated), shape, self.stream)
        mid.record(self.stream)
        self.classifier.enqueue(int(self.d_calibrated), int(self.d_logits), shape, self.stream)
        self.cuda.memcpy_dtoh_async(self.h_logits, self.d_logits, self.stream)
        end.record(self.stream)
        self.stream.synchronize()
        times = {"calibrator": start.time_till(mid), "classifier": mid.time_till(end)}
        return self.h_logits[:n].copy(), times


def refit_from_onnx(plan_path: Path, onnx_path: Path) -> int:
    """Refit a REFIT-built engine in place with the initialisers of an ONNX file of the same
    graph (weights are matched by ONNX initialiser name). Returns the number of weights set."""
    import onnx
    from onnx import numpy_helper

    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(Path(plan_path).read_bytes())
    refitter = trt.Refitter(engine, logger)
    refittable = set(refitter.get_all_weights())
    count = 0
    for init in onnx.load(str(onnx_path)).graph.initializer:
        if init.name in refittable:
            array = np.ascontiguousarray(numpy_helper.to_array(init))
            refitter.set_named_weights(init.name, trt.Weights(array))
            count += 1
    if not refitter.refit_cuda_engine():
        raise EdgeCalibError(f"TensorRT could not refit {plan_path} from {onnx_path}")
    Path(plan_path).write_bytes(bytes(engine.serialize()))
    return count


def open_tensorrt_engines(bundle, fused: bool = True):
    """The engines this device built for the bundle (``build-engine --deploy``)."""
    key, description = device_key()
    entry = bundle.manifest.engines.get("tensorrt", {}).get(key)
    if entry is None or entry.fused:
        raise EdgeCalibError(f"the bundle has no separate TensorRT engines for {description}; "
                             f"run `edge-calib build-engine --deploy {bundle.root} --separate` on "
                             "this device")
    plans = {d: None if p is None else bundle.path(p) for d, p in entry.domains.items()}
    return TrtChain(bundle.path(entry.classifier), plans, tuple(bundle.spec.shape),
                    len(bundle.labels))
