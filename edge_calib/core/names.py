"""Names that become paths (domain names: a bundle's calibrators/DOMAIN.onnx; the files a
manifest names): one rule, checked in one place, by every command that takes them."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from .errors import EdgeCalibError

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(name: str, what: str) -> str:
    """``name`` when it is letters, digits, '.', '_' and '-' (at most 64, starting with a
    letter or digit, no '..'): safe as one path component on every file system."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name) or ".." in name:
        raise EdgeCalibError(f"{what} {name!r} is not a safe name: use letters, digits, '.', '_' "
                             "and '-' (at most 64, starting with a letter or digit)")
    return name


RESERVED_DOMAINS = ("auto", "unknown")  # --domain auto, and frames that fit no domain


def check_domain_name(name: str, what: str) -> str:
    """A safe name that is not one of the words ``run --domain`` gives a meaning of its own."""
    check_name(name, what)
    if name in RESERVED_DOMAINS:
        raise EdgeCalibError(f"{what} {name!r} is reserved (auto: --domain auto; unknown: frames "
                             "that fit no domain); choose another name")
    return name


def check_relative_path(path: str, what: str) -> str:
    """A path inside a folder: relative, '/'-separated, each part a safe name."""
    parts = PurePosixPath(path).parts if isinstance(path, str) else ()
    if not parts or path.startswith("/") or "\\" in path or not all(
            SAFE_NAME.fullmatch(p) and ".." not in p for p in parts):
        raise EdgeCalibError(f"{what} {path!r} points outside the bundle (files are named by "
                             "relative paths of safe names)")
    return path
