"""The deploy bundle: the only thing that crosses from the workstation to the device.

A folder with ``manifest.json``, ``manifest.sha256`` (the manifest's own hash) and the files
the manifest names (ONNX graphs, engines, the domain classifier). The manifest is a versioned,
typed contract: it is written and read only here, validated on load with errors that name the
key, and every file it names must be covered by a sha256 that matches. numpy/json only: no
torch on the device.

manifest.json (format_version 2)::

    {"format": "edge-calib-bundle", "format_version": 2, "task": "classification",
     "classifier": {"files": {VARIANT: PATH}, "fingerprint", "arch", "input_spec", "labels",
                    "precision", "compression", "sparsity", "params", "opset", "metrics"},
     "domains": {NAME: {"calibrator": null | {"files": {VARIANT: PATH}, "fingerprint",
                                              "architecture", "eps", "params",
                                              "trained_against", "source", "target",
                                              "metrics"},
                        "fused": null | {VARIANT: PATH}, "fused_check_max_abs": null | x}},
     "default_domain": NAME,
     "domain_classifier": null | {"file", "features", "domains", "trained_on",
                                  "holdout_frames", "holdout_accuracy", "holdout_known"?,
                                  "novelty"?},
     "engines": {BACKEND: {CACHE_KEY: {"device", "settings", "fused", "classifier",
                                       "domains": {NAME: PATH | null}}}},
     "checks": null | {"inputs": PATH, "from": TEXT},   (float32 NCHW check images, .npy)
     "source_pixels": null | {"file": PATH, "from": TEXT},  (the source's uint8 level histogram
                                                             per frame channel, for --unknown
                                                             histogram; optional)
     "source_stats": null | {"file": PATH, "frames": PATH | null, "dataset": TEXT,
                             "images": N},  (the frozen model's source statistics (.npz) and a
                                             few source frames (uint8 NHWC .npy), what
                                             `edge-calib adapt` trains from; optional)
     "provenance": {"created", "edge_calib", "built_on", "commit", "from": {...}},
     "files": {PATH: SHA256}}

VARIANT is a backend or a graph variant (``onnxruntime``, ``tensorrt``, ``tensorrt_fp16``).
Provenance is descriptive only (file names, host names): nothing reads it back as a path.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import EdgeCalibError
from ..core.fileio import file_digest, write_bytes_atomic
from ..core.names import check_domain_name, check_relative_path
from ..core.spec import InputSpec

FORMAT, FORMAT_VERSION = "edge-calib-bundle", 2
MANIFEST, MANIFEST_HASH = "manifest.json", "manifest.sha256"
TASKS = ("classification", "segmentation")


_JSON_NAMES = {dict: "an object", list: "a list", str: "a string", int: "a number",
               float: "a number", bool: "true or false", type(None): "null"}


def _json_name(kinds) -> str:
    return " or ".join(dict.fromkeys(_JSON_NAMES.get(k, k.__name__) for k in kinds))


class _Reader:
    """Typed access to one JSON object, with errors naming the key path."""

    def __init__(self, where: str, data, path: str = ""):
        self.where, self.path = where, path
        if not isinstance(data, dict):
            raise self.error(f"expected an object, got {_json_name([type(data)])}")
        self.data = data

    def error(self, message: str, key: str | None = None) -> EdgeCalibError:
        at = ".".join(p for p in (self.path, key) if p) or "top level"
        return EdgeCalibError(f"{self.where}: {at}: {message}")

    def get(self, key: str, kind, optional: bool = False):
        if key not in self.data:
            if optional:
                return None
            raise self.error("missing", key)
        value = self.data[key]
        if value is None and optional:
            return None
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise self.error(f"expected {_json_name(kinds)}, got {_json_name([type(value)])}",
                             key)
        if isinstance(value, float) and not math.isfinite(value):
            raise self.error(f"not a finite number ({value})", key)
        return value

    def number(self, key: str, optional: bool = False):
        return self.get(key, (int, float), optional)

    def obj(self, key: str, optional: bool = False) -> "_Reader | None":
        value = self.get(key, dict, optional)
        return None if value is None else _Reader(self.where, value, _join(self.path, key))

    def paths(self, key: str, optional: bool = False) -> dict[str, str] | None:
        """A {name: relative path} object; every path inside the bundle."""
        value = self.obj(key, optional)
        if value is None:
            return None
        return {k: self.path_in_bundle(value.get(k, str), _join(value.path, k))
                for k in value.data}

    def path_in_bundle(self, path: str, key: str) -> str:
        try:
            return check_relative_path(path, "file")
        except EdgeCalibError as exc:
            raise self.error(str(exc), key) from None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


@dataclass
class ClassifierEntry:
    files: dict[str, str]
    fingerprint: str
    arch: str
    input_spec: dict
    labels: list[str]
    precision: str
    compression: dict | None
    sparsity: float
    params: int
    opset: int
    metrics: dict

    @classmethod
    def read(cls, r: _Reader) -> "ClassifierEntry":
        spec = r.obj("input_spec")
        InputSpec.from_dict(spec.data)  # validates
        labels = r.get("labels", list)
        if not all(isinstance(v, str) for v in labels):
            raise r.error("expected a list of strings", "labels")
        return cls(r.paths("files"), r.get("fingerprint", str), r.get("arch", str), spec.data,
                   labels, r.get("precision", str), r.get("compression", dict, optional=True),
                   float(r.number("sparsity")), int(r.number("params")), int(r.number("opset")),
                   r.get("metrics", dict))


@dataclass
class CalibratorEntry:
    files: dict[str, str]
    precision: str
    fingerprint: str
    architecture: dict
    eps: float
    params: int
    trained_against: str
    source: str | None
    target: str | None
    metrics: dict

    @classmethod
    def read(cls, r: _Reader) -> "CalibratorEntry":
        eps = float(r.number("eps"))
        if eps <= 0:
            raise r.error(f"must be positive, got {eps}", "eps")
        precision = r.get("precision", str, optional=True) or "fp32"
        if precision not in ("fp32", "int8"):
            raise r.error(f"must be fp32 or int8, got {precision!r}", "precision")
        return cls(r.paths("files"), precision, r.get("fingerprint", str),
                   r.get("architecture", dict), eps,
                   int(r.number("params")), r.get("trained_against", str),
                   r.get("source", str, optional=True), r.get("target", str, optional=True),
                   r.get("metrics", dict))

    @property
    def arch(self) -> str:
        return self.architecture.get("arch", "resnet")


@dataclass
class DomainEntry:
    calibrator: CalibratorEntry | None
    fused: dict[str, str] | None
    fused_check_max_abs: float | None = None

    @classmethod
    def read(cls, r: _Reader) -> "DomainEntry":
        if "calibrator" not in r.data:
            raise r.error("missing", "calibrator")
        cal = r.obj("calibrator", optional=True)
        return cls(None if cal is None else CalibratorEntry.read(cal), r.paths("fused", True),
                   r.number("fused_check_max_abs", optional=True))


@dataclass
class DomainClassifierEntry:
    file: str
    features: str
    domains: list[str]
    trained_on: dict
    holdout_frames: int
    holdout_accuracy: float
    holdout_known: float | None = None  # % of frames inside a radius, out of fold (open set)
    novelty: str | None = None  # the open-set rule, in words

    @classmethod
    def read(cls, r: _Reader) -> "DomainClassifierEntry":
        known = r.number("holdout_known", optional=True)
        return cls(r.path_in_bundle(r.get("file", str), "file"), r.get("features", str),
                   r.get("domains", list),
                   r.get("trained_on", dict), int(r.number("holdout_frames")),
                   float(r.number("holdout_accuracy")), None if known is None else float(known),
                   r.get("novelty", str, optional=True))


@dataclass
class EngineEntry:
    """Engines built on one device for one set of settings (a cache key)."""

    device: str
    settings: dict
    fused: bool
    classifier: str | None
    domains: dict[str, str | None]

    @classmethod
    def read(cls, r: _Reader) -> "EngineEntry":
        domains = r.obj("domains")
        inside = lambda p, key: None if p is None else r.path_in_bundle(p, key)  # noqa: E731
        return cls(r.get("device", str), r.get("settings", dict), r.get("fused", bool),
                   inside(r.get("classifier", str, optional=True), "classifier"),
                   {k: inside(domains.get(k, str, optional=True), f"domains.{k}")
                    for k in domains.data})


@dataclass
class Manifest:
    task: str
    classifier: ClassifierEntry
    domains: dict[str, DomainEntry]
    default_domain: str
    domain_classifier: DomainClassifierEntry | None = None
    engines: dict[str, dict[str, EngineEntry]] = field(default_factory=dict)
    checks: dict | None = None
    provenance: dict = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    source_pixels: dict | None = None
    source_stats: dict | None = None

    @classmethod
    def from_dict(cls, data, where: str = MANIFEST) -> "Manifest":
        r = _Reader(where, data)
        if r.data.get("format") != FORMAT:
            raise EdgeCalibError(f"{where}: not an edge-calib bundle manifest")
        version = r.data.get("format_version")
        if version != FORMAT_VERSION:
            newer = isinstance(version, int) and version > FORMAT_VERSION
            raise EdgeCalibError(
                f"{where}: bundle format {version} is not supported (this edge-calib reads "
                f"format {FORMAT_VERSION}); " + ("upgrade edge-calib" if newer else
                                                 "rebuild the bundle with `edge-calib export`"))
        task = r.get("task", str)
        if task not in TASKS:
            raise r.error(f"unknown task {task!r}", "task")
        domains_r = r.obj("domains")
        if not domains_r.data:
            raise domains_r.error("no domains")
        for name in domains_r.data:
            try:
                check_domain_name(name, "domain")
            except EdgeCalibError as exc:
                raise domains_r.error(str(exc)) from None
        domains = {name: DomainEntry.read(domains_r.obj(name)) for name in domains_r.data}
        default = r.get("default_domain", str)
        if default not in domains:
            raise r.error(f"{default!r} is not one of the domains", "default_domain")
        dc = r.obj("domain_classifier", optional=True)
        engines_r = r.obj("engines")
        engines = {}
        for backend in engines_r.data:
            per = engines_r.obj(backend)
            engines[backend] = {key: EngineEntry.read(per.obj(key)) for key in per.data}
        files_r = r.obj("files")
        files = {files_r.path_in_bundle(k, k): files_r.get(k, str) for k in files_r.data}
        checks = r.obj("checks", optional=True)
        if checks is not None:
            checks.path_in_bundle(checks.get("inputs", str), "inputs")
            checks.get("from", str)
        pixels = r.obj("source_pixels", optional=True)
        if pixels is not None:
            pixels.path_in_bundle(pixels.get("file", str), "file")
            pixels.get("from", str)
        stats = r.obj("source_stats", optional=True)
        if stats is not None:
            stats.path_in_bundle(stats.get("file", str), "file")
            frames = stats.get("frames", str, optional=True)
            if frames is not None:
                stats.path_in_bundle(frames, "frames")
            stats.get("dataset", str)
            stats.number("images")
        return cls(task, ClassifierEntry.read(r.obj("classifier")), domains, default,
                   None if dc is None else DomainClassifierEntry.read(dc), engines,
                   None if checks is None else checks.data, r.get("provenance", dict), files,
                   None if pixels is None else pixels.data,
                   None if stats is None else stats.data)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION,
                **dataclasses.asdict(self)}

    def named_files(self) -> set[str]:
        """Every file the manifest points at (each must be covered by ``files``)."""
        named = set(self.classifier.files.values())
        for entry in self.domains.values():
            if entry.calibrator is not None:
                named.update(entry.calibrator.files.values())
            named.update((entry.fused or {}).values())
        if self.domain_classifier is not None:
            named.add(self.domain_classifier.file)
        if self.checks is not None:
            named.add(self.checks["inputs"])
        if self.source_pixels is not None:
            named.add(self.source_pixels["file"])
        if self.source_stats is not None:
            named.add(self.source_stats["file"])
            if self.source_stats.get("frames"):
                named.add(self.source_stats["frames"])
        for per in self.engines.values():
            for engine in per.values():
                named.update(p for p in [engine.classifier, *engine.domains.values()] if p)
        return named


@dataclass
class Bundle:
    root: Path
    manifest: Manifest
    digest: str | None = None  # sha256 of the manifest as it was read
    # ONNX files as verify() read and hashed them, by path, until forget_graphs()
    _graph_bytes: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    @property
    def spec(self) -> InputSpec:
        return InputSpec.from_dict(self.manifest.classifier.input_spec)

    @property
    def task(self) -> str:
        return self.manifest.task

    @property
    def domains(self) -> list[str]:
        return list(self.manifest.domains)

    @property
    def labels(self) -> list[str]:
        return self.manifest.classifier.labels

    @property
    def default_domain(self) -> str:
        return self.manifest.default_domain

    def path(self, relative: str) -> Path:
        return self.root / relative

    def domain(self, name: str) -> DomainEntry:
        try:
            return self.manifest.domains[name]
        except KeyError:
            raise EdgeCalibError(f"unknown domain {name!r}; this bundle has: "
                                 f"{', '.join(self.domains)}") from None

    def calibrator(self, name: str) -> CalibratorEntry | None:
        return self.domain(name).calibrator

    def classifier_file(self, variant: str) -> Path:
        return self.path(self._variant(self.manifest.classifier.files, variant, "classifier"))

    def calibrator_file(self, domain: str, variant: str) -> Path | None:
        entry = self.calibrator(domain)
        return None if entry is None else self.path(
            self._variant(entry.files, variant, f"calibrator of {domain}"))

    def fused_file(self, domain: str, variant: str) -> Path | None:
        fused = self.domain(domain).fused
        return None if fused is None else self.path(
            self._variant(fused, variant, f"fused graph of {domain}"))

    def graph_bytes(self, path: Path) -> bytes:
        """An ONNX file's bytes, read from disk once: ``verify`` keeps what it hashed, so the
        sessions run the bytes that were checked (not a file changed since) and start-up reads
        each graph once. Kept until ``forget_graphs``."""
        key = str(path)
        if key not in self._graph_bytes:
            self._graph_bytes[key] = Path(path).read_bytes()
        return self._graph_bytes[key]

    def graph(self, path: Path):
        """The ``onnx.ModelProto`` of ``graph_bytes(path)``, parsed on each call (not kept: a
        parsed graph takes as much memory again as its bytes)."""
        import onnx

        try:
            return onnx.load_model_from_string(self.graph_bytes(path))
        except Exception as exc:  # protobuf's DecodeError and kin
            raise EdgeCalibError(f"bundle {self.root}: {Path(path).name} is not a readable "
                                 f"ONNX graph ({str(exc)[:120]}); rebuild the bundle") from None

    def forget_graphs(self, path: Path | None = None) -> None:
        """Drop the kept bytes of ``path``'s graph, or of every graph (once the sessions that
        needed them exist)."""
        if path is None:
            self._graph_bytes.clear()
        else:
            self._graph_bytes.pop(str(path), None)

    def check_inputs(self):
        """The bundle's own check images (float32 NCHW), or None for an older bundle."""
        if self.manifest.checks is None:
            return None
        import numpy as np

        try:
            x = np.load(self.path(self.manifest.checks["inputs"]), allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise EdgeCalibError(f"bundle {self.root}: check images unreadable ({exc})") from None
        if x.dtype != np.float32 or x.shape[1:] != self.spec.shape:
            raise EdgeCalibError(f"bundle {self.root}: check images are {x.dtype} {x.shape}, "
                                 f"not float32 (N, {', '.join(map(str, self.spec.shape))})")
        return x

    def domain_classifier_file(self) -> Path | None:
        entry = self.manifest.domain_classifier
        return None if entry is None else self.path(entry.file)

    def _variant(self, files: dict, variant: str, what: str) -> str:
        if variant not in files:
            raise EdgeCalibError(f"bundle {self.root}: the {what} has no {variant!r} graph "
                                 f"(it has {', '.join(files)}); rebuild the bundle with "
                                 "`edge-calib export`")
        return files[variant]

    def verify(self) -> None:
        """The manifest matches manifest.sha256; every file it names is covered by a hash;
        every hashed file exists and matches; no graph reads weights from an unhashed external
        data file."""
        manifest_bytes = (self.root / MANIFEST).read_bytes()
        expected = _read_hash(self.root)
        if file_digest_bytes(manifest_bytes) != expected:
            raise EdgeCalibError(f"bundle {self.root}: {MANIFEST} does not match "
                                 f"{MANIFEST_HASH} (edited or corrupt); rebuild or re-copy it")
        uncovered = sorted(self.manifest.named_files() - set(self.manifest.files))
        if uncovered:
            raise EdgeCalibError(f"bundle {self.root}: {uncovered[0]} is named in {MANIFEST} "
                                 "but not covered by a sha256 in its files list")
        for relative, digest in self.manifest.files.items():
            path = self.root / relative
            if not _inside(self.root, path):
                raise EdgeCalibError(f"bundle {self.root}: {relative} points outside the bundle")
            if not path.is_file():
                raise EdgeCalibError(f"bundle {self.root}: {relative} is missing")
            graph = path.suffix == ".onnx"
            got = file_digest_bytes(self.graph_bytes(path)) if graph else file_digest(path)
            if got != digest:
                raise EdgeCalibError(f"bundle {self.root}: {relative} does not match its sha256 "
                                     f"in {MANIFEST} (modified or corrupt)")
            if graph and _external_data(self.graph(path)):
                raise EdgeCalibError(f"bundle {self.root}: {relative} keeps weights in an "
                                     "external data file that no sha256 covers; rebuild the "
                                     "bundle (edge-calib embeds external data at import)")

    def save(self) -> None:
        """Rewrite the manifest (after adding engines), re-hashing every file it names."""
        write_manifest(self.root, self.manifest)


def _external_data(model) -> bool:
    """The ``onnx.ModelProto``'s graph reads any tensor from an external data file."""
    from onnx.external_data_helper import uses_external_data

    return any(uses_external_data(t) for t in model.graph.initializer)


def file_digest_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _read_hash(root: Path) -> str:
    path = root / MANIFEST_HASH
    if not path.is_file():
        raise EdgeCalibError(f"bundle {root}: {MANIFEST_HASH} is missing (the manifest cannot be "
                             "checked); rebuild or re-copy the bundle")
    return path.read_text().split()[0] if path.read_text().split() else ""


def open_bundle(root: str | Path, verify: bool = True) -> Bundle:
    root = Path(root)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise EdgeCalibError(f"{root} is not a deploy bundle (no {MANIFEST})")
    try:
        raw = manifest_path.read_bytes()
        data = json.loads(raw.decode())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgeCalibError(f"{manifest_path}: unreadable ({exc})") from None
    bundle = Bundle(root, Manifest.from_dict(data, str(manifest_path)), file_digest_bytes(raw))
    if verify:
        bundle.verify()
    return bundle


def write_manifest(root: Path, manifest: Manifest) -> None:
    """Hash every file the manifest names into ``files``, then write the manifest (strict
    JSON: a NaN or infinity anywhere is an error) and its own hash."""
    manifest.files = {}
    for relative in sorted(manifest.named_files()):
        path = root / relative
        if not path.is_file():
            raise EdgeCalibError(f"bundle {root}: {relative} is named in the manifest but missing")
        manifest.files[relative] = file_digest(path)
    try:
        text = json.dumps(manifest.to_dict(), indent=2, allow_nan=False) + "\n"
    except ValueError:
        raise EdgeCalibError(f"bundle {root}: the manifest holds a NaN or infinite number "
                             "(a diverged model?); nothing was written") from None
    Manifest.from_dict(json.loads(text), str(root / MANIFEST))  # what we write, we can read
    write_bytes_atomic(root / MANIFEST, text.encode())
    write_bytes_atomic(root / MANIFEST_HASH, f"{file_digest_bytes(text.encode())}  {MANIFEST}\n"
                       .encode())
