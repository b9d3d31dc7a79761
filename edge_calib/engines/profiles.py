"""Device build profiles: the small JSON files in the repository's top-level ``export/``."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import EdgeCalibError

PROFILE_DIRS = (Path.cwd() / "export", Path(__file__).resolve().parents[2] / "export")
KEYS = {"name", "description", "backend", "precision", "workspace_mb", "sparse", "fused",
        "dla_core", "batch", "tensorrt_versions"}


def available_profiles() -> list[str]:
    names = set()
    for folder in PROFILE_DIRS:
        if folder.is_dir():
            names.update(p.stem for p in folder.glob("*.json"))
    return sorted(names)


def load_profile(name_or_path: str) -> dict:
    """A profile by name (``orin-nano``) or by path to a JSON file."""
    candidates = [Path(name_or_path)] + [d / f"{name_or_path}.json" for d in PROFILE_DIRS]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise EdgeCalibError(f"unknown profile {name_or_path!r}; available: "
                             f"{', '.join(available_profiles()) or 'none found'}")
    try:
        profile = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise EdgeCalibError(f"{path}: not valid JSON ({exc})") from None
    unknown = set(profile) - KEYS
    if unknown:
        raise EdgeCalibError(f"{path}: unknown keys {', '.join(sorted(unknown))}")
    return profile | {"path": str(path)}
