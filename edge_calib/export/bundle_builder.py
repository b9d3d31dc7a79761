"""Build a deploy bundle from checkpoints (workstation side).

Writes every graph a device may need: the classifier for ONNX Runtime (real INT8 kernels) and
for TensorRT (Q/DQ on Conv/Gemm inputs only), each calibrator in FP32 and FP16-inside (an INT8
calibrator: its two Q/DQ variants, like the classifier), and per domain the fused calibrator ->
classifier graph. The bundle is built in a temporary folder and
renamed into place: a failed build leaves the previous bundle untouched.
"""

from __future__ import annotations

import datetime
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from .. import __version__
from ..deploy.bundle import (
    CalibratorEntry,
    ClassifierEntry,
    DomainClassifierEntry,
    DomainEntry,
    Manifest,
    write_manifest,
)
from ..core.errors import EdgeCalibError
from ..core.fileio import atomic_directory, write_json_atomic
from ..core.names import check_domain_name
from ..core.provenance import git_commit
from ..models.store import Calibrator, load_calibrator, load_classifier
from .onnx_graphs import (
    calibrator_opset,
    export_calibrator,
    export_classifier,
    export_classifier_fp16,
    fusable,
    fuse,
    opset_of,
)

IDENTITY = "identity"
HISTOGRAM = "histogram"  # DOMAIN=histogram[:TARGET]: per-frame histogram matching, no training


def histogram_calibrator(clf, domain: str, spec: str) -> Calibrator:
    """``DOMAIN=histogram[:TARGET]``: per-frame histogram matching to the classifier's source
    pixels (its recorded source statistics) as a curve calibrator with no training; TARGET
    names the domain's images (for `run --domain auto`)."""
    from ..models.calibrators.curve import histogram_matching
    from ..models.records import CalibratorRecord, TrainingSummary
    from ..models.store import calibrator_fingerprint

    stats = clf.source_stats
    if stats is None:
        raise EdgeCalibError(f"--calibrator {domain}={spec}: {clf.path} has no recorded source "
                             "statistics to match to (they are recorded by train-classifier, "
                             "compress --calib-dataset and import-model --source)")
    module = histogram_matching(clf.spec.channels, clf.spec.lo, clf.spec.hi,
                                stats.pixel_quantiles)
    target = spec.partition(":")[2] or None
    record = CalibratorRecord(
        domain=domain, classifier_fingerprint=clf.fingerprint, input_spec=clf.spec,
        source=stats.dataset, target=target, architecture=module.config,
        fingerprint=calibrator_fingerprint(module),
        training=TrainingSummary(selection={"rule": "none: per-frame histogram matching to "
                                                    f"the source pixels of {stats.dataset}"}))
    return Calibrator(module, record, None)


SOURCE_PIXELS = "source_pixels.json"


def source_pixel_histograms(clf) -> np.ndarray | None:
    """The source pixels' histogram over uint8 levels per frame channel (RGB order), from the
    quantile function the model's source statistics record in normalised units (None without
    them): P(level <= v) = F(x_v + half a level), x_v = (v / 255 - mean) / std, F interpolated
    between the recorded quantiles."""
    stats = clf.source_stats
    if stats is None:
        return None
    spec = clf.spec
    quantiles = stats.pixel_quantiles.double().numpy()
    levels = np.linspace(0.0, 1.0, quantiles.shape[1])
    out = []
    for m in range(spec.channels):
        x = (np.arange(256) / 255.0 - spec.mean[m]) / spec.std[m] + 0.5 / 255.0 / spec.std[m]
        cdf = np.interp(x, np.maximum.accumulate(quantiles[m]), levels)
        cdf[-1] = 1.0
        out.append(np.diff(cdf, prepend=0.0))
    if spec.colour_order == "BGR" and spec.channels == 3:
        out = out[::-1]
    return np.asarray(out)


SOURCE_STATS, SOURCE_FRAMES = "source/stats.npz", "source/frames.npy"
FRAMES_KEPT = {"classification": 256, "segmentation": 24}  # source frames a bundle carries


def write_source_record(folder: Path, clf, data_root) -> dict | None:
    """The frozen model's source statistics (``SourceStats.tensors`` as .npz) and a few of its
    source training frames (uint8 NHWC at the input size, evenly spread over the split), what
    ``edge-calib adapt`` trains a new domain's calibrator from; None when the model has no
    recorded statistics. Frames are left out (``"frames": null``) where the source dataset
    cannot be read here."""
    stats = clf.source_stats
    if stats is None:
        return None
    (folder / "source").mkdir()
    np.savez(folder / SOURCE_STATS, **{k: v.detach().float().numpy()
                                       for k, v in stats.tensors().items()})
    entry = {"file": SOURCE_STATS, "frames": None, "dataset": stats.dataset,
             "images": stats.images}
    try:
        from ..data import load_dataset

        ds = load_dataset(stats.dataset, "train", data_root, download=False,
                          image_size=(clf.spec.height, clf.spec.width), unlabelled=True)
    except EdgeCalibError:
        return entry
    keep = np.unique(np.linspace(0, len(ds) - 1, min(len(ds), FRAMES_KEPT[clf.task]))
                     .round().astype(int))
    np.save(folder / SOURCE_FRAMES, np.ascontiguousarray(clf.spec.resize_uint8(
        ds.images[keep])), allow_pickle=False)
    return entry | {"frames": SOURCE_FRAMES}


def parse_calibrator_args(values: tuple[str, ...]) -> list[tuple[str, str]]:
    """``DOMAIN=PATH``, ``DOMAIN=identity`` or ``DOMAIN=histogram[:TARGET]`` pairs, in order,
    names unique."""
    pairs, seen = [], set()
    for value in values:
        domain, sep, path = value.partition("=")
        if not sep or not domain or not path:
            raise EdgeCalibError(f"--calibrator {value!r}: use DOMAIN=PATH, DOMAIN=identity or "
                                 "DOMAIN=histogram[:TARGET]")
        check_domain_name(domain, "--calibrator: domain")
        if domain in seen:
            raise EdgeCalibError(f"--calibrator: domain {domain!r} given twice")
        seen.add(domain)
        pairs.append((domain, path))
    if not pairs:
        raise EdgeCalibError("give at least one --calibrator DOMAIN=PATH (or DOMAIN=identity)")
    return pairs


def _check_fused(fused: onnx.ModelProto, calibrator: onnx.ModelProto,
                 classifier: onnx.ModelProto, shape) -> tuple[float, float]:
    """(max |fused - classifier(calibrator(x))|, share of outputs with the same argmax) on
    random inputs (ONNX Runtime); non-finite outputs are an error."""
    from ..deploy.ort_session import make_session, run_session

    def run(model, x):
        return run_session(make_session("the fused graph", model=model.SerializeToString()), x)

    x = np.random.default_rng(0).uniform(-1, 1, (4, *shape)).astype(np.float32)
    try:
        a, b = run(fused, x), run(classifier, run(calibrator, x))
    except Exception as exc:  # onnxruntime raises its own exception types
        raise EdgeCalibError(f"the fused graph cannot run in ONNX Runtime "
                             f"({str(exc).strip().splitlines()[-1][:200]}); nothing was written"
                             ) from None
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise EdgeCalibError("the calibrator's graph gives non-finite outputs (NaN or inf): a "
                             "diverged calibrator cannot be deployed; nothing was written")
    return float(np.abs(a - b).max()), float((a.argmax(1) == b.argmax(1)).mean())


@dataclass(frozen=True)
class ClassifierGraphs:
    """The bundle's classifier graphs, as each domain's files are built against them: for ONNX
    Runtime and for TensorRT (the same graph unless INT8), each converted for fusion (None:
    cannot be fused, each domain runs two graphs), the calibrators' opset, the input spec, and
    whether the classifier is quantised (a fused INT8 graph is held to the same top-1)."""

    ort: onnx.ModelProto
    trt: onnx.ModelProto
    fusable_ort: onnx.ModelProto | None
    fusable_trt: onnx.ModelProto | None
    opset: int
    spec: object
    quantised: bool


def export_domain(folder: Path, domain: str, cal: Calibrator, graphs: ClassifierGraphs,
                  stem: str, metrics: dict | None = None) -> DomainEntry:
    """Write one domain's calibrator graphs (``calibrators/STEM*.onnx``) and fused graphs
    (``fused/STEM*.onnx``) into ``folder``, each checked; returns its manifest entry."""
    graph = export_calibrator(cal, opset=graphs.opset)
    files = {"onnxruntime": f"calibrators/{stem}.onnx", "tensorrt": f"calibrators/{stem}.onnx"}
    onnx.save(graph, folder / "calibrators" / f"{stem}.onnx")
    if cal.int8:  # TensorRT's Q/DQ variant; an INT8 calibrator has no FP16 graph
        graph_trt = export_calibrator(cal, opset=graphs.opset, target="tensorrt")
        onnx.save(graph_trt, folder / "calibrators" / f"{stem}.trt.onnx")
        files["tensorrt"] = f"calibrators/{stem}.trt.onnx"
    else:
        graph_trt = graph
        onnx.save(export_calibrator(cal, half=True, opset=graphs.opset),
                  folder / "calibrators" / f"{stem}.fp16.onnx")
        files["tensorrt_fp16"] = f"calibrators/{stem}.fp16.onnx"
    fused, error = None, None
    if graphs.fusable_ort is not None:
        fused_ort = fuse(graph, graphs.fusable_ort, domain)
        error, same_top1 = _check_fused(fused_ort, graph, graphs.ort, graphs.spec.shape)
        # INT8: a 1e-7 difference at a quantiser's rounding boundary moves a value by one
        # quantisation step, so the fused INT8 graph is held to the same top-1 instead
        if same_top1 < 0.99 or (not error <= 1e-4 and not graphs.quantised):
            raise EdgeCalibError(f"fused graph for {domain} differs from calibrator then "
                                 f"classifier by {error:.2e}")
        onnx.save(fused_ort, folder / "fused" / f"{stem}.onnx")
        fused = {"onnxruntime": f"fused/{stem}.onnx", "tensorrt": f"fused/{stem}.onnx"}
        if graphs.trt is not graphs.ort:
            onnx.save(fuse(graph_trt, graphs.fusable_trt, domain),
                      folder / "fused" / f"{stem}.trt.onnx")
            fused["tensorrt"] = f"fused/{stem}.trt.onnx"
    training = cal.meta.training
    return DomainEntry(CalibratorEntry(
        files=files, precision="int8" if cal.int8 else "fp32",
        fingerprint=cal.meta.fingerprint, architecture=cal.module.config,
        eps=cal.module.eps, params=cal.params,
        trained_against=cal.meta.classifier_fingerprint,
        source=cal.meta.source, target=cal.meta.target,
        metrics={"epochs": training.epochs, "selection": training.selection,
                 "last_epoch": training.last_epoch, **(metrics or {})}), fused, error)


def model_source(clf) -> str | None:
    """The dataset the frozen model was trained or calibrated on, where it records one."""
    stats = clf.source_stats
    return stats.dataset if stats is not None else (
        clf.metrics.get("source") or clf.metrics.get("source_test"))


def check_images(clf, data_root, count: int = 8) -> tuple[np.ndarray, str]:
    """The first ``count`` test images of the classifier's source dataset, preprocessed, for
    the device to check its engines against (`edge-calib doctor`); random inputs in the input
    range when that dataset cannot be read here."""
    source = clf.metrics.get("source_test") or clf.metrics.get("source")
    if source:
        try:
            from ..data import load_dataset

            ds = load_dataset(source, "test", data_root, download=False,
                              image_size=(clf.spec.height, clf.spec.width))
            return clf.spec.preprocess(ds.images[:count]), f"{source} test[:{count}]"
        except EdgeCalibError:
            pass
    rng = np.random.default_rng(0)
    lo, hi = np.array(clf.spec.lo).reshape(1, -1, 1, 1), np.array(clf.spec.hi).reshape(1, -1, 1, 1)
    x = rng.uniform(0, 1, (count, *clf.spec.shape)) * (hi - lo) + lo
    return x.astype(np.float32), "random inputs in the input range"


def build_bundle(classifier_path: str, calibrators: list[tuple[str, str]], out: str | Path,
                 precision: str, force: bool = False, domain_classifier=None,
                 progress: bool = True, data_root=None) -> Manifest:
    """Export everything into ``out`` and write its manifest; returns the manifest."""
    out = Path(out)
    _check_out(out, force)
    clf = load_classifier(classifier_path)
    loaded = _load_calibrators(clf, classifier_path, calibrators, precision)
    with atomic_directory(out, force=force) as tmp:
        (tmp / "calibrators").mkdir()
        (tmp / "fused").mkdir()
        classifier, graphs = _export_classifier(tmp, clf, precision)
        domains = {}
        for domain, path in calibrators:
            domains[domain] = (DomainEntry(None, None) if path == IDENTITY else
                               export_domain(tmp, domain, loaded[domain], graphs, domain))
        commit, _ = git_commit()
        manifest = Manifest(
            task=clf.task, classifier=classifier, domains=domains,
            default_domain=calibrators[0][0],
            provenance={"created": datetime.datetime.now(datetime.timezone.utc)
                        .isoformat(timespec="seconds"), "edge_calib": __version__,
                        "built_on": platform.node(), "commit": commit,
                        "from": {"classifier": Path(classifier_path).name,
                                 "calibrators": {d: Path(p).name for d, p in calibrators}}})
        entry = None if domain_classifier is None else domain_classifier(
            tmp, clf.spec, calibrators, loaded, model_source(clf))
        if entry is not None:
            manifest.domain_classifier = DomainClassifierEntry(**entry)
        _write_checks_and_source(tmp, manifest, clf, data_root)
        write_manifest(tmp, manifest)
    return manifest


def _check_out(out: Path, force: bool) -> None:
    """``out`` is new, or a bundle that ``force`` may replace (never a user's file or folder)."""
    if out.exists() and not force:
        raise EdgeCalibError(f"{out} already exists; pass --force to replace it")
    if out.exists() and (not out.is_dir() or (any(out.iterdir())
                                               and not (out / "manifest.json").is_file())):
        raise EdgeCalibError(f"--out {out} is not a bundle (a file, or a folder without "
                             "manifest.json): --force replaces only a bundle; give another "
                             "--out")


def _load_calibrators(clf, classifier_path: str, calibrators: list[tuple[str, str]],
                      precision: str) -> dict:
    """Every domain's calibrator (histogram matching built, identity left out), each checked
    against the classifier and the bundle's precision before anything is written."""
    int8 = clf.int8
    if precision == "int8" and not int8:
        raise EdgeCalibError(f"--precision int8 needs an INT8 classifier; {classifier_path} is "
                             "float (run `edge-calib compress --int8` first)")
    if precision in ("fp32", "fp16") and int8:
        raise EdgeCalibError(f"{classifier_path} is INT8-compressed; use --precision int8")
    loaded = {}
    for domain, path in calibrators:
        if path == HISTOGRAM or path.startswith(HISTOGRAM + ":"):
            loaded[domain] = histogram_calibrator(clf, domain, path)
        elif path != IDENTITY:
            cal = load_calibrator(path)
            cal.check_pairs_with(clf)
            if cal.int8 and not int8:
                raise EdgeCalibError(f"calibrator {path} is INT8: it goes into a bundle whose "
                                     "classifier is INT8 too (TensorRT builds Q/DQ graphs as "
                                     "INT8 engines); use the float calibrator here")
            loaded[domain] = cal
    return loaded


def _export_classifier(tmp: Path, clf, precision: str) -> tuple[ClassifierEntry, ClassifierGraphs]:
    """The classifier's graphs per backend (an imported model's own file where it can be), its
    manifest entry, and what the domains' exports fuse with."""
    int8 = clf.int8
    cls_ort = export_classifier(clf, "onnxruntime")
    files = {"onnxruntime": "classifier.onnx", "tensorrt": "classifier.onnx"}
    cls_trt = cls_ort
    if clf.onnx_bytes is not None and clf.graph_layout == "NHWC":
        onnx.save(cls_ort, tmp / "classifier.onnx")  # the user's graph behind a Transpose
    elif clf.onnx_bytes is not None:  # the user's file, byte for byte, for every backend
        (tmp / "classifier.onnx").write_bytes(clf.onnx_bytes)
    elif int8:
        onnx.save(cls_ort, tmp / "classifier.onnx")
        cls_trt = export_classifier(clf, "tensorrt")
        onnx.save(cls_trt, tmp / "classifier.trt.onnx")
        files["tensorrt"] = "classifier.trt.onnx"
    else:
        onnx.save(cls_ort, tmp / "classifier.onnx")
        onnx.save(export_classifier_fp16(clf), tmp / "classifier.fp16.onnx")
        files["tensorrt_fp16"] = "classifier.fp16.onnx"
    classifier = ClassifierEntry(
        files=files, fingerprint=clf.fingerprint, arch=clf.arch, input_spec=clf.spec.to_dict(),
        labels=clf.labels, precision=precision, compression=clf.compression,
        sparsity=(clf.compression or {}).get("sparsity", 0.0), params=clf.params,
        opset=opset_of(cls_ort),
        metrics={k: v for k, v in clf.metrics.items()
                 if k.endswith("acc") or k in ("source_test", "source", "conversion_warning",
                                               "graph_layout")})
    # calibrators are exported at the opset they need; the classifier is merged with them
    # converted to it, or, where it cannot be, each domain runs two graphs
    opset = calibrator_opset(cls_ort)
    try:
        fusable_ort = fusable(cls_ort, opset)
        fusable_trt = fusable_ort if cls_trt is cls_ort else fusable(cls_trt, opset)
        classifier.metrics["fusion"] = "fused" if opset_of(cls_ort) == opset else \
            f"fused with the classifier converted from opset {opset_of(cls_ort)} to {opset}"
    except EdgeCalibError as exc:
        fusable_ort = fusable_trt = None
        classifier.metrics["fusion"] = f"two graphs per domain (cannot fuse: {exc})"
    return classifier, ClassifierGraphs(cls_ort, cls_trt, fusable_ort, fusable_trt, opset,
                                        clf.spec, bool(int8 or clf.metrics.get("int8_graph")))


def _write_checks_and_source(tmp: Path, manifest: Manifest, clf, data_root) -> None:
    """The bundle's check images, the source's pixel histograms and its statistics record
    (what ``doctor``, ``run --unknown histogram`` and ``adapt`` read on the device)."""
    inputs, origin = check_images(clf, data_root)
    (tmp / "checks").mkdir()
    np.save(tmp / "checks" / "inputs.npy", inputs, allow_pickle=False)
    manifest.checks = {"inputs": "checks/inputs.npy", "from": origin}
    histograms = source_pixel_histograms(clf)
    if histograms is not None:
        write_json_atomic(tmp / SOURCE_PIXELS, {"levels": 256, "histograms": np.round(
            histograms, 8).tolist()})
        origin = Path(clf.path).name if clf.path else "the classifier"
        manifest.source_pixels = {"file": SOURCE_PIXELS,
                                  "from": f"the source statistics of {origin}"}
    manifest.source_stats = write_source_record(tmp, clf, data_root)
