"""Typed records of what a checkpoint says beside its tensors, read and checked in one place (as
``bundle.Manifest`` is for a bundle): a classifier's and a calibrator's metadata, the two
training loops' saved states, and whether a compression record means INT8. Torch-free."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..core.errors import EdgeCalibError
from ..core.spec import InputSpec


def is_int8(compression: dict | None) -> bool:
    """A model (classifier or calibrator) whose Conv/Linear layers were quantised to INT8 by
    ``edge-calib compress --int8``."""
    return bool((compression or {}).get("int8"))


def _check_fields(cls, data: dict, where: str, kind: str) -> None:
    """``data`` has ``cls._REQUIRED`` keys and each key of ``cls._TYPES`` it has is of its
    type(s) (a nested ``"a.b"`` key is looked up inside ``a``): a missing or mistyped key is
    one line naming its path."""
    def lookup(path: str):
        value = data
        for part in path.split("."):
            if not isinstance(value, dict) or part not in value:
                return False, None
            value = value[part]
        return True, value

    for key in cls._REQUIRED:
        if not lookup(key)[0]:
            raise EdgeCalibError(f"{where}: {kind} is malformed ({key!r} missing)")
    for key, kinds in cls._TYPES.items():
        found, value = lookup(key)
        if found and (not isinstance(value, kinds) or (kinds is int and isinstance(value, bool))):
            raise EdgeCalibError(f"{where}: {kind} is malformed ({key!r} is a "
                                 f"{type(value).__name__})")


def _split_known(cls, data: dict) -> tuple[dict, dict]:
    """(the fields ``cls`` knows, the keys it does not, kept as read)."""
    names = {f.name for f in dataclasses.fields(cls)} - {"extra", "input_spec"}
    return ({k: v for k, v in data.items() if k in names},
            {k: v for k, v in data.items() if k not in names})


def _read_fields(cls, meta: dict, where: str, kind: str) -> tuple[InputSpec, dict, dict]:
    """A checkpoint's metadata checked against a record class (its ``_REQUIRED`` keys and
    ``_TYPES``): (input spec, the fields the class knows, the keys it does not). A missing or
    mistyped key is one line naming it."""
    data = dict(meta)
    _check_fields(cls, data, where, f"{kind} checkpoint")
    try:
        spec = InputSpec.from_dict(data.pop("input_spec"))
    except (KeyError, TypeError, ValueError, AttributeError, EdgeCalibError) as exc:
        raise EdgeCalibError(f"{where}: {kind} checkpoint is malformed (input_spec: {exc})") \
            from None
    return (spec, *_split_known(cls, data))


class _TrainingStateRecord:
    """Reading and writing a training state's metadata: its fields by name, checked against
    ``_REQUIRED``/``_TYPES``, the keys this version does not know kept as read."""

    @classmethod
    def read(cls, meta: dict, where: str):
        _check_fields(cls, meta, where, "training state")
        known, extra = _split_known(cls, meta)
        return cls(extra=extra, **known)

    def to_dict(self) -> dict:
        return self.extra | {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                             if f.name != "extra"}


@dataclass
class CalibratorTrainingState(_TrainingStateRecord):
    """What the calibrator trainer's state file (``X.calib.state.pt``) records beside its
    tensors: the settings it trains with, the finished epochs and their metrics-log rows, the
    frozen model's fingerprint, the selected epoch (``--select``) and the scored starts
    (``--restarts``). States written before ``best`` and ``restarts`` existed read None."""

    config: dict  # dataclasses.asdict(CalibratorConfig)
    epoch: int
    history: list
    classifier_fingerprint: str
    best: list | None = None  # [held-out score, epoch] of the epoch selected so far
    restarts: list | None = None
    extra: dict = field(default_factory=dict)

    _TYPES = {"config": dict, "config.batch_size": int, "config.restart": int, "epoch": int,
              "history": list, "classifier_fingerprint": str, "best": (list, type(None)),
              "restarts": (list, type(None))}
    _REQUIRED = ("config", "config.batch_size", "epoch", "history", "classifier_fingerprint")

    @property
    def batch_size(self) -> int:
        """The batch the saved run trained at."""
        return self.config["batch_size"]

    @property
    def restart(self) -> int:
        """Which start the saved run is (0 before restarts existed)."""
        return self.config.get("restart", 0)


@dataclass
class SupervisedTrainingState(_TrainingStateRecord):
    """What the supervised loop's state file (``X.state.pt``) records beside its tensors: the
    finished epochs' rows and the loop's settings (``supervised.Fit``)."""

    history: list
    fit: dict
    extra: dict = field(default_factory=dict)

    _TYPES = {"history": list, "fit": dict, "fit.batch_size": int}
    _REQUIRED = ("history", "fit", "fit.batch_size")

    @property
    def batch_size(self) -> int:
        return self.fit["batch_size"]


@dataclass
class TrainingSummary:
    """How a calibrator was trained (a checkpoint's ``training``): what ``train``, ``adapt`` and
    the demos write and the bundle reads. A field a checkpoint does not record (written before
    it existed, or a calibrator that was not trained, e.g. histogram matching) reads as None."""

    epochs: int | None = None
    selection: dict | None = None  # the epoch-selection rule and its score (--select)
    restarts: list | None = None  # the starts scored before the chosen one continued
    ema: float | None = None
    last_epoch: dict | None = None  # the last epoch's metrics-log row
    time_per_epoch_s: float | None = None
    device: str | None = None
    world_size: int | None = None
    batch_size: int | None = None  # the batch it trained at
    extra: dict = field(default_factory=dict)  # keys this version does not know, kept as read

    _TYPES = {"epochs": int, "selection": dict, "restarts": list, "ema": (int, float),
              "last_epoch": dict, "time_per_epoch_s": (int, float), "device": str,
              "world_size": int, "batch_size": int}

    @classmethod
    def read(cls, data: dict, where: str) -> "TrainingSummary":
        """From a checkpoint's ``training``; a mistyped field is one line naming its key path."""
        known = {}
        for key, kinds in cls._TYPES.items():
            value = data.get(key)
            if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
                raise EdgeCalibError(f"{where}: calibrator checkpoint is malformed "
                                     f"('training.{key}' is a {type(value).__name__})")
            known[key] = value
        return cls(extra={k: v for k, v in data.items() if k not in cls._TYPES}, **known)

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return self.extra | {k: v for k, v in out.items() if v is not None}


@dataclass
class CalibratorRecord:
    """What a calibrator checkpoint records beside its weights. ``architecture``,
    ``fingerprint`` and ``params`` are filled in when it is saved."""

    domain: str | None
    classifier_fingerprint: str
    input_spec: InputSpec
    source: str | None = None
    target: str | None = None
    classifier_path: str | None = None
    max_samples: int | None = None
    config: dict = field(default_factory=dict)  # the training settings
    training: TrainingSummary = field(default_factory=TrainingSummary)
    compression: dict | None = None  # INT8: {"int8": True, "activation_range": ...}
    float_fingerprint: str | None = None  # INT8: the float calibrator it was quantised from
    quantization: dict | None = None  # INT8: data, samples, scales
    architecture: dict | None = None  # the family and size (saved as "calibrator")
    fingerprint: str | None = None
    params: int | None = None
    extra: dict = field(default_factory=dict)  # keys this version does not know, kept as read

    _TYPES = {"domain": (str, type(None)), "classifier_fingerprint": str,
              "source": (str, type(None)), "target": (str, type(None)),
              "classifier_path": (str, type(None)), "max_samples": (int, type(None)),
              "config": dict, "training": (dict, TrainingSummary),
              "compression": (dict, type(None)),
              "float_fingerprint": (str, type(None)), "quantization": (dict, type(None)),
              "architecture": dict, "fingerprint": str, "params": int}
    _REQUIRED = ("classifier_fingerprint", "input_spec", "architecture", "fingerprint")

    @property
    def int8(self) -> bool:
        return is_int8(self.compression)

    @classmethod
    def read(cls, meta: dict, where: str) -> "CalibratorRecord":
        """From a checkpoint's metadata; a missing or mistyped field is one line naming it."""
        data = dict(meta)
        if "calibrator" in data:
            data["architecture"] = data.pop("calibrator")
        spec, known, extra = _read_fields(cls, data, where, "calibrator")
        if isinstance(known.get("training"), dict):
            known["training"] = TrainingSummary.read(known["training"], where)
        known.setdefault("domain", None)
        return cls(input_spec=spec, extra=extra, **known)

    def to_dict(self) -> dict:
        """The checkpoint's metadata, keyed as it has always been written."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("extra", "architecture", "input_spec")}
        out = {k: v for k, v in out.items() if v is not None}
        out["training"] = self.training.to_dict()
        out["input_spec"] = self.input_spec.to_dict()
        if self.architecture is not None:
            out["calibrator"] = self.architecture
        return self.extra | out


@dataclass
class ClassifierRecord:
    """What a classifier checkpoint records beside its weights: its identity (architecture,
    classes, input spec, compression; an imported model's task and graph layout), its labels,
    metrics and fingerprint, and, outside the fingerprint, the description of its recorded
    source statistics (their tensors travel with the weights)."""

    arch: str
    num_classes: int
    input_spec: InputSpec
    labels: list
    fingerprint: str
    compression: dict | None = None
    metrics: dict = field(default_factory=dict)
    task: str | None = None  # an imported model's (our own architectures know theirs)
    graph_layout: str = "NCHW"  # an imported graph's own input layout
    onnx_sha256: str | None = None  # an imported model's file
    source_stats: dict | None = None  # source_record.SourceStats.meta()
    extra: dict = field(default_factory=dict)  # keys this version does not know, kept as read

    _TYPES = {"arch": str, "num_classes": int, "labels": list, "fingerprint": str,
              "compression": (dict, type(None)), "metrics": dict, "task": (str, type(None)),
              "graph_layout": str, "onnx_sha256": (str, type(None)),
              "source_stats": (dict, type(None))}
    _REQUIRED = ("arch", "num_classes", "input_spec", "labels", "fingerprint")

    @property
    def int8(self) -> bool:
        return is_int8(self.compression)

    @classmethod
    def read(cls, meta: dict, where: str) -> "ClassifierRecord":
        """From a checkpoint's metadata; a missing or mistyped field is one line naming it.
        Checkpoints written before a field existed read its default."""
        spec, known, extra = _read_fields(cls, meta, where, "classifier")
        if known["num_classes"] < 1 or len(known["labels"]) != known["num_classes"]:
            raise EdgeCalibError(f"{where}: classifier checkpoint is malformed ('labels' has "
                                 f"{len(known['labels'])} names for {known['num_classes']} "
                                 "classes)")
        return cls(input_spec=spec, extra=extra, **known)

    def to_dict(self) -> dict:
        """The checkpoint's metadata, keyed as it has always been written."""
        out = {"arch": self.arch, "num_classes": self.num_classes,
               "input_spec": self.input_spec.to_dict(), "compression": self.compression,
               "labels": self.labels, "metrics": self.metrics, "fingerprint": self.fingerprint}
        if self.task is not None:
            out["task"] = self.task
        if self.onnx_sha256 is not None:
            out["onnx_sha256"] = self.onnx_sha256
            out["graph_layout"] = self.graph_layout
        if self.source_stats is not None:
            out["source_stats"] = self.source_stats
        return self.extra | out
