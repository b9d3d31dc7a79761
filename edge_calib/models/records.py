"""Typed records of what a checkpoint says about its model, read and checked in one place (as
``bundle.Manifest`` is for a bundle): a calibrator's metadata, and whether a compression record
means INT8."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..core.errors import EdgeCalibError
from ..core.spec import InputSpec


def is_int8(compression: dict | None) -> bool:
    """A model (classifier or calibrator) whose Conv/Linear layers were quantised to INT8 by
    ``edge-calib compress --int8``."""
    return bool((compression or {}).get("int8"))


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
    training: dict = field(default_factory=dict)  # the training summary
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
              "config": dict, "training": dict, "compression": (dict, type(None)),
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
        for key in cls._REQUIRED:
            if key not in data:
                raise EdgeCalibError(f"{where}: calibrator checkpoint is malformed ({key!r} "
                                     "missing)")
        for key, kinds in cls._TYPES.items():
            if key in data and (not isinstance(data[key], kinds)
                                or (kinds is int and isinstance(data[key], bool))):
                raise EdgeCalibError(f"{where}: calibrator checkpoint is malformed ({key!r} is a "
                                     f"{type(data[key]).__name__})")
        try:
            spec = InputSpec.from_dict(data.pop("input_spec"))
        except (KeyError, TypeError, ValueError, AttributeError, EdgeCalibError) as exc:
            raise EdgeCalibError(f"{where}: calibrator checkpoint is malformed (input_spec: "
                                 f"{exc})") from None
        names = {f.name for f in dataclasses.fields(cls)} - {"extra", "input_spec"}
        known = {k: data.pop(k) for k in list(data) if k in names}
        known.setdefault("domain", None)
        return cls(input_spec=spec, extra=data, **known)

    def to_dict(self) -> dict:
        """The checkpoint's metadata, keyed as it has always been written."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("extra", "architecture", "input_spec")}
        out = {k: v for k, v in out.items() if v is not None}
        out["input_spec"] = self.input_spec.to_dict()
        if self.architecture is not None:
            out["calibrator"] = self.architecture
        return self.extra | out
