"""``edge-calib adapt``: a new domain added to a deploy bundle from its unlabelled frames, with
nothing but the bundle (no checkpoint, no source dataset).

1. The bundle's frozen model is read back from its own ONNX graph (``import-model``'s
   converter, checked against ONNX Runtime as an import is, on the few source frames the
   bundle carries), with the source statistics and those frames
   (``bundle_builder.write_source_record``).
2. A calibrator is trained on the frames (``CalibratorTrainer``, the curve family and the
   statistics recipe by default), 20% of them held out.
3. The choice: the trained calibrator and per-frame histogram matching to the source pixels are
   both scored on the held-out frames by the unlabelled criterion (the frozen model's
   source-statistics distance, as ``eval --unlabelled`` reports it); the lower is deployed, and
   both scores and the choice are recorded in the domain's manifest entry.
4. The domain's graphs are written under new names, the auto-domain model is refitted with the
   frames (``domain_model.add_domain``, a new file), and the manifest is swapped atomically,
   unless the bundle changed since it was read (then nothing is swapped, the calibrator is kept
   as a checkpoint beside the bundle, and the command fails). The other domains' files are not
   touched; files only the previous manifest named are removed after the swap.

One adapt at a time per bundle (an advisory lock, released if the process dies).
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import json
import os
import platform
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from ..core.errors import EdgeCalibError
from ..core.fileio import derived_path, file_digest, write_json_atomic
from ..core.names import check_domain_name
from ..core.progress import echo_err
from ..deploy.bundle import MANIFEST, DomainClassifierEntry, open_bundle, write_manifest

MIN_FRAMES = 16  # fewer cannot hold out a fifth and still train and radius a domain
HOLDOUT = 0.2
CHECK_FRAMES = 8  # the bundle's source frames the imported model is checked on
LOCK = ".adapt.lock"


@dataclass
class AdaptRequest:
    deploy: Path
    frames: Path
    domain: str
    cfg: object  # train.calibrate.CalibratorConfig
    replace: bool = False
    device: str = "auto"
    progress: bool = True


@contextmanager
def bundle_lock(root: Path):
    """One ``adapt`` at a time on a bundle: an flock on ``root/.adapt.lock``."""
    try:
        fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise EdgeCalibError(f"--deploy {root}: cannot write into the bundle ({exc.strerror}); "
                             "nothing was changed") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EdgeCalibError(f"--deploy {root}: another `edge-calib adapt` is changing this "
                                 "bundle; wait for it to finish") from None
        yield
    finally:
        os.close(fd)


def check_writable(root: Path) -> None:
    """Every folder adapt writes into takes a file (a probe, created and removed)."""
    for folder in (root, root / "calibrators", root / "fused"):
        if not folder.exists():
            continue
        try:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".adapt-probe-"):
                pass
        except OSError as exc:
            raise EdgeCalibError(f"--deploy {root}: cannot write into {folder.name}/ "
                                 f"({exc.strerror}); nothing was changed") from None


def read_frames(folder: Path, spec):
    """The new domain's frames (a collection from ``run --collect`` or any folder of images),
    at the model's input size, in file order; its collection record or None."""
    from ..runtime.collect import FILE, read_collection
    from ..train.tensors import load_domain

    if not folder.is_dir():
        raise EdgeCalibError(f"--frames {folder}: no such folder")
    record = read_collection(folder) if (folder / FILE).exists() else None
    data = load_domain(str(folder), "train", None, spec, unlabelled=True)
    if len(data) < MIN_FRAMES:
        raise EdgeCalibError(f"--frames {folder}: {len(data)} frames; adapt needs at least "
                             f"{MIN_FRAMES} of the new domain (collect for longer)")
    return data, record


def source_record(bundle) -> dict:
    """The bundle's source record (statistics, frames), or the one line saying it has none."""
    stats = bundle.manifest.source_stats
    if stats is None:
        raise EdgeCalibError(f"--deploy {bundle.root}: the bundle holds no source statistics "
                             "(exported before `adapt` existed, or from a model without them); "
                             "export it again with this release")
    return stats


def frozen_model(bundle, check_frames: np.ndarray):
    """The bundle's ONNX Runtime classifier graph as a frozen torch module (the importer's
    converter and check, on ``check_frames``: uint8 source frames the bundle carries), with
    the bundle's source statistics attached."""
    from ..models.importer import ImportRequest, import_onnx
    from ..models.source_record import SourceStats

    stats = source_record(bundle)
    spec = bundle.spec
    request = ImportRequest(task=bundle.task, mean=tuple(spec.mean), std=tuple(spec.std),
                            colour_order=spec.colour_order, layout="nchw",
                            labels=list(bundle.labels))
    clf = import_onnx(bundle.classifier_file("onnxruntime"), request, check_frames,
                      f"the bundle's {stats['dataset']} frames")
    try:
        with np.load(bundle.path(stats["file"]), allow_pickle=False) as saved:
            tensors = {k: torch.from_numpy(saved[k]) for k in saved.files}
    except (OSError, ValueError) as exc:
        raise EdgeCalibError(f"--deploy {bundle.root}: {stats['file']} unreadable ({exc})") \
            from None
    taps = sum(1 for k in tensors if k.endswith(".mean"))
    clf.source_stats = SourceStats.from_saved(
        {"dataset": stats["dataset"], "images": int(stats["images"]), "taps": taps}, tensors,
        f"--deploy {bundle.root}: {stats['file']}")
    clf.path = str(bundle.classifier_file("onnxruntime"))
    return clf


def source_frames(bundle, count: int):
    """The source frames the bundle carries, repeated in order up to ``count`` (the trainer
    pairs one source frame with each target frame)."""
    from ..data.catalog import ImageSet
    from ..train.tensors import DomainData

    stats = source_record(bundle)
    if not stats.get("frames"):
        raise EdgeCalibError(f"--deploy {bundle.root}: the bundle holds no source frames (its "
                             f"source {stats['dataset']} could not be read when it was exported); "
                             "export it again where that dataset is")
    try:
        frames = np.load(bundle.path(stats["frames"]), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise EdgeCalibError(f"--deploy {bundle.root}: {stats['frames']} unreadable ({exc})") \
            from None
    spec = bundle.spec
    if frames.dtype != np.uint8 or frames.shape[1:] != (spec.height, spec.width, spec.channels):
        raise EdgeCalibError(f"--deploy {bundle.root}: {stats['frames']} holds {frames.dtype} "
                             f"{frames.shape}, not the model's uint8 frames")
    index = np.arange(max(count, len(frames))) % len(frames)
    return DomainData(ImageSet(frames[index], None, stats["dataset"], "train"), spec)


def train_calibrator(clf, source, target, cfg, device, progress: bool):
    """The trained calibrator (selected as ``train`` selects) and the trainer it came from."""
    from ..train.calibrate import CalibratorTrainer
    from ..train.restarts import chosen_trainer

    with tempfile.TemporaryDirectory(prefix="edge-calib-adapt-") as work:
        def make(config, state, metrics, check_memory=True):
            return CalibratorTrainer(clf, source, target, config, device, state, metrics,
                                     cap_batch=True,  # a device adapts with what memory holds
                                     check_memory=check_memory)

        trainer = chosen_trainer(make, cfg, Path(work) / "new.calib.pt", False, progress)
        module, summary = trainer.run(progress=progress)
    return module, summary, trainer


def candidate(module, clf, bundle, domain: str, frames: Path, config: dict, training):
    """The calibrator ``module`` as a checkpoint record (``training``: a TrainingSummary)."""
    from ..models.records import CalibratorRecord
    from ..models.store import Calibrator, calibrator_fingerprint

    record = CalibratorRecord(
        domain=domain, classifier_fingerprint=bundle.manifest.classifier.fingerprint,
        input_spec=clf.spec, source=bundle.manifest.source_stats["dataset"], target=str(frames),
        config=config, training=training, architecture=module.config,
        fingerprint=calibrator_fingerprint(module))
    return Calibrator(module, record, None)


def classifier_graphs(bundle):
    """The bundle's classifier graphs, prepared for fusion as ``build_bundle`` prepares them."""
    from .bundle_builder import ClassifierGraphs
    from .onnx_graphs import calibrator_opset, fusable

    entry = bundle.manifest.classifier
    ort_path = bundle.classifier_file("onnxruntime")
    trt_path = bundle.path(entry.files.get("tensorrt", entry.files["onnxruntime"]))
    cls_ort = onnx.load(str(ort_path))
    cls_trt = cls_ort if trt_path == ort_path else onnx.load(str(trt_path))
    opset = calibrator_opset(cls_ort)
    try:
        fusable_ort = fusable(cls_ort, opset)
        fusable_trt = fusable_ort if cls_trt is cls_ort else fusable(cls_trt, opset)
    except EdgeCalibError:
        fusable_ort = fusable_trt = None
    quantised = entry.precision == "int8" or bool(entry.metrics.get("int8_graph"))
    return ClassifierGraphs(cls_ort, cls_trt, fusable_ort, fusable_trt, opset, bundle.spec,
                            quantised)


def unused_name(root: Path, pattern: str) -> str:
    """``pattern`` (with ``{n}``) formatted with the first n whose file is not there yet."""
    n = 1
    while (root / pattern.format(n=n)).exists():
        n += 1
    return pattern.format(n=n)


def adapt_bundle(req: AdaptRequest) -> dict:
    """Train, choose, stage and swap in the new domain; returns the JSON summary."""
    from ..train.source_stats import stats_distance
    from ..models.calibrators.curve import histogram_matching
    from ..models.records import TrainingSummary
    from ..train.tensors import resolve_device

    started = time.time()
    root = Path(req.deploy)
    bundle = open_bundle(root)
    check_domain_name(req.domain, "--domain")
    if req.domain in bundle.domains and not req.replace:
        raise EdgeCalibError(f"--domain {req.domain}: the bundle already has this domain; pass "
                             "--replace to train it again")
    check_writable(root)
    with bundle_lock(root):
        target, collection = read_frames(Path(req.frames), bundle.spec)
        source = source_frames(bundle, len(target))
        clf = frozen_model(bundle, source.images[:CHECK_FRAMES])
        device = resolve_device(req.device)
        cfg = dataclasses.replace(req.cfg, holdout=HOLDOUT)
        cfg.validate()
        echo_err(f"adapt: {len(target)} frames of {req.domain} from {req.frames}; training a "
                 f"{cfg.arch} calibrator ({cfg.epochs} epochs) against {bundle.root}'s frozen "
                 f"model on {device}")
        module, summary, trainer = train_calibrator(clf, source, target, cfg, device,
                                                    req.progress)
        stats = clf.source_stats
        spec = clf.spec
        matching = histogram_matching(spec.channels, spec.lo, spec.hi, stats.pixel_quantiles)
        held = trainer.holdout
        chunk = min(trainer.batch, 4 if bundle.task == "segmentation" else 256)  # checked batch
        scores = {name: stats_distance(clf.module, held, stats, g.to(device), chunk, device)
                  for name, g in (("calibrator", module), ("histogram", matching))}
        chosen = min(scores, key=scores.get)
        choice = {"rule": f"lower source-statistics distance on {len(held)} held-out frames of "
                          f"{len(target)} (no labels)", "scores": scores, "chosen": chosen}
        if chosen == "calibrator":
            cal = candidate(module.cpu(), clf, bundle, req.domain, req.frames,
                            dataclasses.asdict(trainer.cfg), summary)
        else:
            cal = candidate(matching.cpu(), clf, bundle, req.domain, req.frames, {},
                            TrainingSummary(selection={
                                "rule": "none: per-frame histogram matching to the source "
                                        f"pixels of {stats.dataset}, chosen over the trained "
                                        "calibrator"}))
        made = {"at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "host": platform.node(), "device": str(device), "frames": len(target),
                "collection": None if collection is None else {
                    k: collection.get(k) for k in ("domain", "started", "ended", "frames",
                                                   "bundle")},
                "train_s": round(time.time() - started, 1)}
        result = swap_in(bundle, req, cal, choice, made, target)
    return result | {"seconds": round(time.time() - started, 1)}


def swap_in(bundle, req: AdaptRequest, cal, choice: dict, made: dict, target) -> dict:
    """Stage the domain's files under new names, refit the auto-domain model, and swap the
    manifest unless the bundle changed meanwhile."""
    from .bundle_builder import export_domain

    root = bundle.root
    old = bundle.manifest
    stem = unused_name(root / "calibrators", f"{req.domain}-{cal.meta.fingerprint[:8]}-{{n}}.onnx"
                       )[:-len(".onnx")]
    (root / "calibrators").mkdir(exist_ok=True)
    (root / "fused").mkdir(exist_ok=True)
    staged_before = set(p for p in root.rglob("*") if p.is_file())
    try:
        entry = export_domain(root, req.domain, cal, classifier_graphs(bundle), stem,
                              {"choice": choice, "made": made})
        domain_classifier, report = old.domain_classifier, None
        if old.domain_classifier is not None:
            domain_classifier, report = refit_domain_model(bundle, req.domain, target)
        manifest = dataclasses.replace(
            old, domains={**old.domains, req.domain: entry}, domain_classifier=domain_classifier,
            provenance={**old.provenance, "adapted": [*old.provenance.get("adapted", []),
                                                      {"domain": req.domain, **made}]})
        if file_digest(root / MANIFEST) != bundle.digest:
            kept = keep_calibrator(root, req.domain, cal)
            raise EdgeCalibError(f"--deploy {root}: the bundle changed while adapt ran (another "
                                 "export or adapt); its manifest was not swapped; the calibrator "
                                 f"is kept in {kept}")
        write_manifest(root, manifest)
    except BaseException:
        for p in set(p for p in root.rglob("*") if p.is_file()) - staged_before:
            if p.name != LOCK:
                p.unlink(missing_ok=True)
        raise
    removed = sorted(old.named_files() - manifest.named_files())
    for relative in removed:
        (root / relative).unlink(missing_ok=True)
    return {"deploy": str(root), "domain": req.domain, "domains": list(manifest.domains),
            "chosen": choice["chosen"], "scores": choice["scores"], "frames": made["frames"],
            "replaced": req.domain in old.domains, "auto_domain": report,
            "files": sorted(set(manifest.named_files()) - set(old.named_files())),
            "removed": removed}


def refit_domain_model(bundle, domain: str, target):
    """The bundle's auto-domain model with ``domain`` learnt from ``target``'s frames (replacing
    a domain of that name), written under a new name; (its entry, the report)."""
    from ..imaging.domain_features import NAME
    from .domain_model import add_domain

    entry = bundle.manifest.domain_classifier
    path = bundle.path(entry.file)
    model = json.loads(path.read_text())
    if model.get("features") != NAME:
        raise EdgeCalibError(f"--deploy {bundle.root}: its auto-domain model uses features "
                             f"{model.get('features')!r}; export the bundle again")
    names = list(model["domains"])
    arrays = {k: model[k] for k in ("mean", "std", "weights", "bias", "open_set")}
    if domain in names:  # --replace: the domain is learnt again from the new frames
        k = names.index(domain)
        names.pop(k)
        arrays["weights"] = np.delete(np.asarray(arrays["weights"]), k, axis=1).tolist()
        arrays["bias"] = np.delete(np.asarray(arrays["bias"]), k).tolist()
        arrays["open_set"] = {**arrays["open_set"], **{
            key: [v for i, v in enumerate(arrays["open_set"][key]) if i != k]
            for key in ("references", "radii")}}
    fitted, report = add_domain(arrays, target.images, np.random.default_rng(0))
    names.append(domain)
    file = unused_name(bundle.root, "domain_classifier-{n}.json")
    write_json_atomic(bundle.root / file, {"features": NAME, "domains": names, **fitted})
    trained_on = {**entry.trained_on, domain: str(target.name)}
    return DomainClassifierEntry(file, NAME, names, trained_on, report["holdout_frames"],
                                 report["holdout_accuracy"], entry.holdout_known,
                                 entry.novelty), report


def keep_calibrator(root: Path, domain: str, cal) -> Path:
    """The calibrator as a checkpoint beside the bundle (``export --calibrator``)."""
    from ..models.store import save_calibrator

    path = derived_path(root, f"{root.name}.{domain}", ".calib.pt")
    save_calibrator(path, cal.module, cal.meta)
    return path
