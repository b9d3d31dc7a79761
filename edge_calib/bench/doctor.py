"""``edge-calib doctor``: a board self-check to run on a Jetson or any NVIDIA machine (and
anywhere else: what is missing is said, not failed on).

It records what is installed (JetPack/L4T, TensorRT, Polygraphy, the CUDA runtime, the GPU,
OpenCV with or without GStreamer, ONNX Runtime and its providers), checks the bundle, and runs
its check images through every registered backend that can run here: ONNX Runtime first, as the
reference, then each other one (TensorRT builds the bundle's engines first), compared with it on
the same images (top-1 or per-pixel agreement, max |difference| of the logits), each timed.
One JSON and one Markdown report to send back.
"""

from __future__ import annotations

import datetime
import json
import platform
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from ..core.errors import EdgeCalibError
from ..core.fileio import write_bytes_atomic, write_json_atomic
from ..core.stats import summarize
from ..engines import BACKENDS, Backend, open_engines

REFERENCE = "onnxruntime"  # the backend every other one is compared with
AGREEMENT = 0.99  # top-1 (or per-pixel) agreement another backend must reach against it


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace").strip("\x00\n ")
    except OSError:
        return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def software() -> dict:
    """What is installed, each entry a version or a reason it is missing."""
    out = {"python": platform.python_version(), "platform": platform.platform(),
           "edge_calib": _version("edge-calib"), "numpy": np.__version__,
           "board": _read("/proc/device-tree/model"),
           "l4t": (_read("/etc/nv_tegra_release") or "").split(",")[0] or None}
    try:
        import cv2

        info = cv2.getBuildInformation()
        gst = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                    if line.strip().startswith("GStreamer:")), "unknown")
        out["opencv"] = {"version": cv2.__version__, "gstreamer": gst.split()[0] if gst else gst}
    except ImportError:
        out["opencv"] = "not available: no OpenCV importable (pip install 'edge-calib[opencv]' or "\
                        "JetPack's system OpenCV)"
    for backend in BACKENDS.values():
        try:
            out |= backend.software()
        except ImportError as exc:
            out[backend.name] = f"not available: {exc.name or exc} is not installed"
        except EdgeCalibError as exc:
            out[backend.name] = f"not available: {exc}"
    return out


def _time(engines, domain: str, x: np.ndarray, iterations: int) -> dict:
    engines.infer(domain, x)  # warm
    times = []
    for _ in range(iterations):
        started = time.perf_counter()
        engines.infer(domain, x)
        times.append((time.perf_counter() - started) * 1e3)
    return summarize(times)


def compare(reference: np.ndarray, other: np.ndarray) -> dict:
    """Top-1 (classification) or per-pixel (segmentation) agreement and max |difference|."""
    return {"agreement": float((reference.argmax(1) == other.argmax(1)).mean()),
            "max_abs_diff": float(np.abs(reference - other).max())}


def run_doctor(deploy: str | None, report_dir: str, settings: dict, iterations: int = 50) -> dict:
    report = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "software": software(), "bundle": None, **dict.fromkeys(BACKENDS),
              "problems": [], "warnings": []}
    if deploy is not None:
        from ..deploy.bundle import open_bundle

        try:
            bundle = open_bundle(deploy)
        except EdgeCalibError as exc:
            report["bundle"] = {"ok": False, "error": str(exc)}
            report["problems"].append(f"bundle: {exc}")
            bundle = None
        if bundle is not None:
            x = bundle.check_inputs()
            origin = bundle.manifest.checks["from"] if x is not None else "random inputs"
            if x is None:
                x = np.random.default_rng(0).uniform(-1, 1, (4, *bundle.spec.shape)).astype(np.float32)
            report["bundle"] = {"ok": True, "task": bundle.task, "domains": bundle.domains,
                                "precision": bundle.manifest.classifier.precision,
                                "check_images": f"{len(x)} ({origin})"}
            metrics = bundle.manifest.classifier.metrics
            if metrics.get("conversion_warning"):
                report["warnings"].append(f"classifier: {metrics['conversion_warning']}")
            if str(metrics.get("fusion", "")).startswith("two graphs"):
                report["warnings"].append(f"classifier: {metrics['fusion']}")
            reference: dict[str, np.ndarray] = {}
            for backend in (BACKENDS[REFERENCE], *(b for b in BACKENDS.values()
                                                   if b.name != REFERENCE)):
                report[backend.name] = check_backend(backend, bundle.root, settings, x, reference,
                                                     iterations, report["problems"])
    report["ok"] = not report["problems"]
    out = Path(report_dir)
    write_json_atomic(out / "doctor.json", report)
    write_bytes_atomic(out / "doctor.md", markdown(report).encode())
    return report


def check_backend(backend: Backend, deploy: Path, settings: dict, x: np.ndarray,
                  reference: dict[str, np.ndarray], iterations: int, problems: list[str]) -> dict:
    """One registered backend on the bundle: not available here (what is missing, not a
    problem), or prepared (``Backend.prepare``: TensorRT builds its engines), run on the check
    images frame by frame and timed at batch 1. The reference backend's outputs fill
    ``reference``; every other backend is compared with them per domain and must agree on
    ``AGREEMENT`` of the top-1 labels (or pixels)."""
    from ..deploy.bundle import open_bundle

    try:
        backend.software()
    except (ImportError, EdgeCalibError) as exc:
        missing = exc.name if isinstance(exc, ImportError) and exc.name else exc
        return {"ok": None, "not_available": str(missing)}
    try:
        result = {"ok": True, **backend.prepare(deploy, settings), "latency_ms_batch1": {}}
        bundle = open_bundle(deploy)  # as prepared (TensorRT adds its engines to the manifest)
        with open_engines(bundle, backend.name, fused=settings.get("fused", True)) as engines:
            for d in bundle.domains:
                got = np.concatenate([engines.infer(d, x[i:i + 1])[0] for i in range(len(x))])
                if backend.name == REFERENCE:
                    reference[d] = got
                elif d in reference:
                    for key, value in compare(reference[d], got).items():
                        result.setdefault(key, {})[d] = value
                    if result["agreement"][d] < AGREEMENT:
                        problems.append(f"{backend.name}: domain {d} agrees with "
                                        f"{REFERENCE} on {100 * result['agreement'][d]:.1f}% only")
                        result["ok"] = False
                result["latency_ms_batch1"][d] = _time(engines, d, x[:1], iterations)
        return result
    except EdgeCalibError as exc:
        problems.append(f"{backend.name}: {exc}")
        return {"ok": False, "error": str(exc)}


def markdown(report: dict) -> str:
    lines = ["# edge-calib doctor", "", f"{report['created']}; overall: "
             + ("**ok**" if report["ok"] else "**problems found**"), "", "## Software", "",
             "| component | found |", "|---|---|"]
    for key, value in report["software"].items():
        lines.append(f"| {key} | {json.dumps(value) if isinstance(value, (dict, list)) else value} |")
    if report["bundle"] is not None:
        lines += ["", "## Bundle", "", "```", json.dumps(report["bundle"], indent=2), "```"]
    for backend in BACKENDS:
        if report[backend] is not None:
            lines += ["", f"## {backend}", "", "```", json.dumps(report[backend], indent=2), "```"]
    if report.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    if report["problems"]:
        lines += ["", "## Problems", ""] + [f"- {p}" for p in report["problems"]]
    return "\n".join(lines) + "\n"
