"""Checksummed, resumable downloads from a list of mirrors (standard library only)."""

from __future__ import annotations

import os
import socket
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import click

from ..core.errors import EdgeCalibError
from ..core.fileio import derived_path, file_digest

CHUNK = 1 << 16


@dataclass(frozen=True)
class RemoteFile:
    """One canonical file: its name, mirrors (tried in order) and published checksum. A file
    without a published checksum (digest None) is checked by ``validate(path) -> bool``."""

    name: str
    urls: tuple[str, ...]
    algorithm: str | None  # "md5" or "sha256"
    digest: str | None
    validate: object = None

    def verify(self, path: Path) -> bool:
        if self.digest is None:
            return bool(self.validate(path)) if self.validate else True
        return file_digest(path, self.algorithm) == self.digest

    def urls_for(self, mirror: str | None) -> tuple[str, ...]:
        """The canonical mirrors, or ``mirror`` (a base URL) alone when one is given."""
        if mirror:
            return (mirror.rstrip("/") + "/" + self.name,)
        return self.urls


def downloads_allowed() -> bool:
    """``EDGE_CALIB_OFFLINE=1`` turns automatic downloads off (tests, air-gapped machines)."""
    return os.environ.get("EDGE_CALIB_OFFLINE", "") not in ("1", "true", "yes")


def fetch_file(remote: RemoteFile, dest: Path, mirror: str | None = None,
               progress: bool = True, timeout: float = 30.0) -> Path:
    """Download ``remote`` to ``dest`` unless a verified copy is already there.

    Partial downloads are kept as ``dest.part`` and resumed with an HTTP Range request. The
    file is renamed into place only after its checksum matches; a mismatch deletes the partial
    file and tries the next mirror.
    """
    if dest.exists():
        if remote.verify(dest):
            return dest
        raise EdgeCalibError(f"{dest} exists but its {remote.algorithm} does not match the "
                             f"canonical {remote.digest}; delete it and fetch again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = derived_path(dest, dest.name, ".part")
    failures = []
    for url in remote.urls_for(mirror):
        try:
            _download_resumable(url, part, progress, timeout, label=remote.name)
        except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            failures.append(f"{url}: {reason}")
            continue
        if remote.verify(part):
            os.replace(part, dest)
            return dest
        got = "" if remote.digest is None else file_digest(part, remote.algorithm)
        part.unlink()
        failures.append(f"{url}: checksum mismatch ({remote.algorithm} {got}, expected "
                        f"{remote.digest})" if remote.digest else f"{url}: not a valid file")
    raise EdgeCalibError(
        f"could not download {remote.name} ({'; '.join(failures)}). If this machine is offline, "
        f"copy the canonical file to {dest}")


def _download_resumable(url: str, part: Path, progress: bool, timeout: float, label: str):
    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "edge-calib"}
    if start:
        headers["Range"] = f"bytes={start}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # the partial file is already complete
            return
        raise
    with response:
        if start and response.status != 206:  # server ignored the range: start over
            start = 0
        length = response.length
        total = None if length is None else length + start
        with open(part, "ab" if start else "wb") as out, click.progressbar(
                length=total or 1, label=f"downloading {label}", file=sys.stderr,
                hidden=not progress or total is None) as bar:
            bar.update(start)
            for chunk in iter(lambda: response.read(CHUNK), b""):
                out.write(chunk)
                bar.update(len(chunk))
