"""The calibrator families, behind one interface (``BoundedCalibrator``).

Every family computes G(x) = clamp(x + delta(x), lo, hi) with ||delta||_inf <= eps, starts at
the identity, trains with the same losses and exports to ONNX in front of the classifier. They
differ in what they can change and in what they cost on the device:

- ``resnet``: the paper's generator (reference): spatial capacity, a large full-resolution cost;
- ``pointwise``: a per-domain colour mapping (1x1 convolutions), a few pointwise nodes;
- ``thumbnail``: a per-frame colour matrix predicted from a thumbnail, a near-constant cost;
- ``lowres``: a small network at 1/factor resolution, its bounded output upsampled;
- ``shallow``: a few full-resolution 3x3 convolutions, no norms, no pads;
- ``curve``: a per-frame monotone tone curve per channel, from the frame's histogram (it
  contains per-frame histogram matching to the source), one table lookup per pixel.

A calibrator's config (``module.config``) is plain data: ``arch``, ``channels``, its size
settings, ``eps`` and ``perturbation``; checkpoints store it and ``build_calibrator`` rebuilds it.
"""

from __future__ import annotations

from ...core.errors import EdgeCalibError
from ..families import DEFAULT_ARCH, FAMILY_SUMMARIES, PERTURBATIONS
from .base import BoundedCalibrator
from .curve import CurveCalibrator
from .lowres import LowResCalibrator
from .pointwise import PointwiseCalibrator
from .resnet import ResnetCalibrator
from .shallow import ShallowCalibrator
from .thumbnail import ThumbnailCalibrator

FAMILIES: dict[str, type[BoundedCalibrator]] = {
    cls.arch: cls for cls in (ResnetCalibrator, PointwiseCalibrator, ThumbnailCalibrator,
                              LowResCalibrator, ShallowCalibrator, CurveCalibrator)}
if list(FAMILIES) != list(FAMILY_SUMMARIES):  # the CLI help lists FAMILY_SUMMARIES
    raise ImportError("calibrator families and their summaries disagree")
LEGACY_ARCH = "resnet"  # what a checkpoint written before the families existed holds
# size settings added after checkpoints of the family were written, with the value those had
LATER_SETTINGS = {"curve": {"matrix": 0}}

__all__ = ["FAMILIES", "PERTURBATIONS", "BoundedCalibrator", "DEFAULT_ARCH", "calibrator_class",
           "parse_size", "make_calibrator", "fingerprint_identity"]


def calibrator_class(arch: str) -> type[BoundedCalibrator]:
    try:
        return FAMILIES[arch]
    except KeyError:
        raise EdgeCalibError(f"unknown calibrator architecture {arch!r}; choose one of "
                             f"{', '.join(FAMILIES)}") from None


def parse_size(arch: str, text: str | None) -> dict[str, int]:
    """``--calibrator-size``: a preset name (small, medium, large) or ``key=value,...``."""
    cls = calibrator_class(arch)
    if not text:
        return cls.check_size({})
    if text in cls.PRESETS:
        return cls.check_size(dict(cls.PRESETS[text]))
    size = {}
    for item in text.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise EdgeCalibError(f"--calibrator-size {text!r}: use a preset "
                                 f"({', '.join(cls.PRESETS)}) or key=value pairs such as "
                                 + ",".join(f"{k}={v.default}" for k, v in cls.SIZE.items()))
        try:
            size[key.strip()] = int(value)
        except ValueError:
            raise EdgeCalibError(f"--calibrator-size: {key.strip()} must be an integer, "
                                 f"got {value!r}") from None
    return cls.check_size(size)


def make_calibrator(config: dict, channels: int, lo, hi) -> BoundedCalibrator:
    """Rebuild a calibrator from its config (a checkpoint without ``arch`` is a resnet)."""
    cls = calibrator_class(config.get("arch", LEGACY_ARCH))
    size = {k: config[k] for k in cls.SIZE if k in config}
    return cls(channels=channels, eps=config["eps"], lo=lo, hi=hi,
               perturbation=config.get("perturbation", "symmetric"), **size)


def fingerprint_identity(config: dict) -> dict:
    """The config as fingerprinted. Checkpoints written before there were several families had
    no ``arch`` key; a resnet's identity leaves it out so their fingerprints still match. A
    size setting added later is left out at the value the older checkpoints had."""
    arch = config.get("arch", LEGACY_ARCH)
    if arch == LEGACY_ARCH:
        return {k: v for k, v in config.items() if k != "arch"}
    later = LATER_SETTINGS.get(arch, {})
    return {k: v for k, v in config.items() if not (k in later and later[k] == v)}
