"""Device build profiles: small JSON files shipped inside the package (``edge_calib/profiles``,
so a wheel install finds them wherever it runs), or a path to a file of the same form.
Validated on load: an unknown key or a value of the wrong kind is one line naming the key."""

from __future__ import annotations

import json
from pathlib import Path

from ..core.errors import EdgeCalibError
from . import BACKENDS

PROFILES = Path(__file__).resolve().parents[1] / "profiles"
PRECISIONS = ("fp32", "fp16", "int8")


def _batch(value) -> bool:
    return (isinstance(value, list) and len(value) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
            and value[0] <= value[1] <= value[2])


# key -> (check, what is expected)
KEYS = {
    "name": (lambda v: isinstance(v, str), "a string"),
    "description": (lambda v: isinstance(v, str), "a string"),
    "backend": (lambda v: v in BACKENDS, f"one of {', '.join(BACKENDS)}"),
    "precision": (lambda v: v is None or v in PRECISIONS,
                  f"null (the bundle's) or one of {', '.join(PRECISIONS)}"),
    "workspace_mb": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 16,
                     "an integer >= 16"),
    "sparse": (lambda v: isinstance(v, bool), "true or false"),
    "fused": (lambda v: isinstance(v, bool), "true or false"),
    "dla_core": (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)
                                         and v >= 0), "null or a core number"),
    "batch": (_batch, "[min, opt, max] batch sizes, 1 <= min <= opt <= max"),
    "tensorrt_versions": (lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v),
                          "a list of version strings"),
    "jetpack": (lambda v: isinstance(v, str), "a string"),
}


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES.glob("*.json"))


def load_profile(name_or_path: str) -> dict:
    """A profile by name (``orin-nano``) or by path to a JSON file."""
    path = Path(name_or_path)
    if not path.is_file():
        path = PROFILES / f"{name_or_path}.json"
    if not path.is_file():
        raise EdgeCalibError(f"unknown profile {name_or_path!r}; available: "
                             f"{', '.join(available_profiles())}, or a path to a JSON file")
    try:
        profile = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgeCalibError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(profile, dict):
        raise EdgeCalibError(f"{path}: a profile is a JSON object")
    for key, value in profile.items():
        if key not in KEYS:
            raise EdgeCalibError(f"{path}: unknown key {key!r}; profiles have "
                                 f"{', '.join(KEYS)}")
        check, expected = KEYS[key]
        if not check(value):
            raise EdgeCalibError(f"{path}: {key} must be {expected}, got {value!r}")
    return {"backend": "tensorrt", **profile, "path": str(path)}
