"""Add TensorRT engines to a bundle, on the device that will run them (NOT EXERCISED HERE:
no TensorRT/GPU where edge-calib was developed).

Engines are cached in the bundle under ``engines/<gpu>_sm<cc>_trt<version>/``: a plan only runs
on the GPU model and TensorRT version it was built with, so each device builds its own once
and later runs reuse it (jetson-inference's convention).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from ..bundle import EngineEntry, open_bundle, write_manifest
from ..errors import EdgeCalibError
from ..fileio import atomic_directory
from .tensorrt_backend import (
    TrtFeatures,
    build_engine,
    device_key,
    import_tensorrt,
    parse_version,
    precision_plan,
)


def onnx_variant(entry_files: dict, variant: str) -> str:
    """The bundle file for a precision-plan variant (``fp32``, ``fp16`` or ``qdq``)."""
    if variant == "fp16":
        if "tensorrt_fp16" not in entry_files:
            raise EdgeCalibError("this bundle has no FP16 graph for a strongly typed TensorRT "
                                 "build; rebuild it with this edge-calib")
        return entry_files["tensorrt_fp16"]
    return entry_files["tensorrt"]


def add_tensorrt_engines(deploy, settings: dict, force: bool = False) -> dict:
    trt = import_tensorrt()
    bundle = open_bundle(deploy)
    key, description = device_key()
    existing = bundle.manifest.engines.get("tensorrt", {})
    if key in existing and not force:
        return {"cached": True, "key": key, **dataclasses.asdict(existing[key])}
    precision = settings.get("precision") or bundle.manifest.classifier.precision
    plan = precision_plan(precision, TrtFeatures(parse_version(trt.__version__)))
    batch = tuple(settings.get("batch") or (1, 1, 8))
    shape = tuple(bundle.spec.shape)
    common = dict(precision=precision, shape=shape, batch=batch,
                  workspace_mb=settings.get("workspace_mb", 256), sparse=settings.get("sparse", False),
                  refit=settings.get("refit", False), dla_core=settings.get("dla_core"))
    with atomic_directory(bundle.root, force=True) as tmp:
        shutil.copytree(bundle.root, tmp, dirs_exist_ok=True)
        folder = tmp / "engines" / key
        folder.mkdir(parents=True, exist_ok=True)
        cache = folder / "timing.cache"
        entry = EngineEntry(description, {"precision": precision, "plan": plan} | common,
                            bool(settings.get("fused")), None, {})
        cls_files = bundle.manifest.classifier.files
        if settings.get("fused"):
            for domain in bundle.domains:
                fused = bundle.domain(domain).fused
                source = fused["tensorrt"] if fused else onnx_variant(cls_files, plan["classifier"])
                info = build_engine(tmp / source, folder / f"{domain}.plan", timing_cache=cache, **common)
                entry.domains[domain] = f"engines/{key}/{info['plan']}"
        else:
            info = build_engine(tmp / onnx_variant(cls_files, plan["classifier"]),
                                folder / "classifier.plan", timing_cache=cache, **common)
            entry.classifier = f"engines/{key}/{info['plan']}"
            for domain in bundle.domains:
                cal = bundle.calibrator(domain)
                if cal is None:
                    entry.domains[domain] = None
                    continue
                info = build_engine(tmp / onnx_variant(cal.files, plan["calibrator"]),
                                    folder / f"calibrator_{domain}.plan", timing_cache=cache,
                                    **(common | {"sparse": False}))
                entry.domains[domain] = f"engines/{key}/{info['plan']}"
        bundle.manifest.engines.setdefault("tensorrt", {})[key] = entry
        write_manifest(Path(tmp), bundle.manifest)
    return {"cached": False, "key": key, **dataclasses.asdict(entry)}
