"""Add TensorRT engines to a bundle, on the device that will run them (NOT EXERCISED HERE:
no TensorRT/GPU where edge-calib was developed).

Engines live in the bundle under ``engines/<device>/<key>/`` and are listed in its manifest
(hashed like every file) under a key made of everything that changes a plan
(``tensorrt_backend.engine_key``): asking again with the same settings reuses them; any
other precision, sparsity, DLA core, batch profile or workspace, or a changed ONNX file,
builds new ones. The bundle is rebuilt in a temporary copy and swapped in only when complete.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from ..core.errors import EdgeCalibError
from ..core.fileio import atomic_directory, file_digest
from ..deploy.bundle import EngineEntry, open_bundle, write_manifest
from .tensorrt_backend import (
    TrtFeatures,
    build_plan,
    check_precision,
    device_key,
    engine_key,
    gpu_identity,
    import_tensorrt,
    onnx_variant,
    parse_version,
    precision_plan,
)


def planned_graphs(bundle, plan: dict, fused: bool) -> tuple[str | None, dict]:
    """(classifier graph or None, {domain: graph or None}) the engines are built from."""
    cls_files = bundle.manifest.classifier.files
    if fused:
        return None, {d: (bundle.domain(d).fused or {}).get("tensorrt")
                      or onnx_variant(cls_files, plan["classifier"]) for d in bundle.domains}
    calibrators = {d: None if bundle.calibrator(d) is None
                   else onnx_variant(bundle.calibrator(d).files, plan["calibrator"])
                   for d in bundle.domains}
    return onnx_variant(cls_files, plan["classifier"]), calibrators


def add_tensorrt_engines(deploy, settings: dict, force: bool = False) -> dict:
    bundle = open_bundle(deploy)
    precision = check_precision(bundle.manifest.classifier.precision, settings.get("precision"))
    trt = import_tensorrt()
    features = TrtFeatures(parse_version(trt.__version__))
    if not features.supported:
        raise EdgeCalibError(f"TensorRT {trt.__version__} is too old: Polygraphy builds with "
                             "8.5 or newer (JetPack 5 or 6)")
    plan = precision_plan(precision, features)
    fused = bool(settings.get("fused", True))
    if fused and any(bundle.calibrator(d) is not None and bundle.domain(d).fused is None
                     for d in bundle.domains):
        fused = False  # a classifier the export could not merge: two engines per domain
    build = {"precision": precision, "fused": fused, "sparse": bool(settings.get("sparse")),
             "dla_core": settings.get("dla_core"),
             "batch": list(settings.get("batch") or (1, 1, 8)),
             "workspace_mb": int(settings.get("workspace_mb") or 256), "plan": plan}
    name, cc = gpu_identity()
    device = device_key(name, cc, trt.__version__)
    classifier_graph, domain_graphs = planned_graphs(bundle, plan, fused)
    graphs = {g for g in [classifier_graph, *domain_graphs.values()] if g}
    key = f"{device}/{engine_key(device, build, {g: file_digest(bundle.path(g)) for g in graphs})}"
    existing = bundle.manifest.engines.get("tensorrt", {})
    if key in existing and not force:
        return {"cached": True, "key": key, **dataclasses.asdict(existing[key])}
    shape = tuple(bundle.spec.shape)
    with atomic_directory(bundle.root, force=True) as tmp:
        shutil.copytree(bundle.root, tmp, dirs_exist_ok=True)
        folder = tmp / "engines" / key
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        cache = tmp / "engines" / device / "timing.cache"

        def make(graph: str, name: str, sparse: bool) -> str:
            build_plan(tmp / graph, folder / f"{name}.plan", plan, precision, shape,
                       tuple(build["batch"]), build["workspace_mb"], sparse,
                       build["dla_core"], cache)
            return f"engines/{key}/{name}.plan"

        entry = EngineEntry(f"{name} (sm {cc[0]}.{cc[1]}), TensorRT {trt.__version__}", build,
                            fused, None, {})
        if classifier_graph:
            entry.classifier = make(classifier_graph, "classifier", build["sparse"])
        for domain, graph in domain_graphs.items():
            # 2:4 sparsity is the classifier's; a calibrator's small convolutions stay dense
            entry.domains[domain] = None if graph is None else make(
                graph, domain if fused else f"calibrator_{domain}", build["sparse"] and fused)
        engines = bundle.manifest.engines.setdefault("tensorrt", {})
        for old in [k for k, e in engines.items() if k.startswith(device + "/") and e.fused == fused]:
            del engines[old]  # superseded by the new settings on this device
            shutil.rmtree(tmp / "engines" / old, ignore_errors=True)
        engines[key] = entry
        write_manifest(Path(tmp), bundle.manifest)
    return {"cached": False, "key": key, **dataclasses.asdict(entry)}
