"""Checkpoints are data, never programs.

A checkpoint file is ``torch.save`` of a plain dict: ``format``, ``kind``, ``version``, a JSON
string ``meta`` and ``tensors`` (name -> {param name -> tensor}). It is read back with
``torch.load(weights_only=True)``, which refuses any pickled object that is not a tensor or a
plain container, so a file carrying a code payload fails to load.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import zipfile
from pathlib import Path

import torch

from ..core.errors import EdgeCalibError
from ..core.fileio import write_bytes_atomic

FORMAT = "edge-calib"
VERSION = 1


def save_checkpoint(path: str | Path, kind: str, meta: dict, tensors: dict) -> None:
    """Write atomically: the previous file stays in place until the new one is complete. The
    payload is serialised in memory first, so that a full disk is the file system's own error
    (one line from the CLI), not torch's zip writer failing mid-way."""
    payload = {"format": FORMAT, "kind": kind, "version": VERSION,
               "meta": json.dumps(meta, sort_keys=True),
               "tensors": _to_cpu(tensors)}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes_atomic(path, buffer.getbuffer())


def check_replaceable(path: str | Path, option: str = "--out") -> None:
    """An existing output is replaced only when it is an edge-calib checkpoint: any other file
    at that path (a user's own) is refused in one line and left as it is. The tensors are
    mapped, not read: a large checkpoint costs no memory here."""
    path = Path(path)
    if not path.is_file():
        return  # nothing there, or a folder: the writer refuses that with its own message
    try:
        _payload(path, mmap=True)
    except Exception:  # whatever does not load as one of ours is not ours
        raise EdgeCalibError(f"{option} {path}: an existing file that is not an edge-calib "
                             "checkpoint; it is left as it is (choose another name or move it)"
                             ) from None


def _to_cpu(obj):
    """Tensors anywhere in nested dicts/lists moved to the CPU (optimiser states included)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().contiguous()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def load_checkpoint(path: str | Path, kind: str | tuple[str, ...]) -> tuple[dict, dict]:
    """(meta, tensors) of an edge-calib checkpoint of the expected kind, or a one-line error."""
    return _read(Path(path), kind, mmap=False)


def load_checkpoint_meta(path: str | Path, kind: str | tuple[str, ...]) -> dict:
    """The metadata alone, checked as ``load_checkpoint`` checks it; the tensors are mapped,
    not read (a resumed run asks its saved batch before it loads the state)."""
    return _read(Path(path), kind, mmap=True)[0]


def _read(path: Path, kind: str | tuple[str, ...], mmap: bool) -> tuple[dict, dict]:
    kinds = (kind,) if isinstance(kind, str) else kind
    if not path.is_file():
        raise EdgeCalibError(f"{path}: no such checkpoint file")
    payload = _payload(path, mmap)
    if payload.get("kind") not in kinds:
        raise EdgeCalibError(f"{path}: is a {payload.get('kind')} checkpoint, expected "
                             f"{' or '.join(kinds)}")
    if payload.get("version") != VERSION:
        raise EdgeCalibError(f"{path}: checkpoint version {payload.get('version')} is not "
                             f"supported (this edge-calib reads version {VERSION})")
    try:
        meta = json.loads(payload["meta"])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise EdgeCalibError(f"{path}: checkpoint metadata is unreadable") from None
    return meta, payload.get("tensors", {})


def _payload(path: Path, mmap: bool = False) -> dict:
    """The checkpoint's outer dict read as plain data (``weights_only``), or a one-line error
    naming why it is not one of ours; ``mmap`` maps the tensors instead of reading them."""
    if path.stat().st_size == 0:
        raise EdgeCalibError(f"{path}: empty file (0 bytes), not a checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        unsafe = _unsafe_global(str(exc))
        if unsafe:
            raise EdgeCalibError(f"{path}: refused to load, the file holds objects that are not "
                                 f"plain data ({unsafe})") from None
        raise EdgeCalibError(f"{path}: corrupt or truncated checkpoint (not a file torch "
                             "can read)") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, IndexError,
            KeyError) as exc:
        raise EdgeCalibError(f"{path}: corrupt or truncated checkpoint "
                             f"({_first_line(exc)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise EdgeCalibError(f"{path}: not an edge-calib checkpoint")
    return payload


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


def _unsafe_global(message: str) -> str | None:
    """The global a weights-only unpickler refused (a code payload), if that was the error."""
    for line in message.splitlines():
        if "global" in line.lower() and ("unsupported" in line.lower() or "GLOBAL" in line):
            return line.strip()[:160]
    return None


def state_fingerprint(state: dict, identity: dict) -> str:
    """sha256 over every tensor (name, dtype, shape, bytes) and a JSON identity (arch, spec...).

    Any change to a weight, a BatchNorm statistic or the architecture changes the fingerprint.
    """
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode())
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.numpy().tobytes() if tensor.dtype != torch.bfloat16
                      else tensor.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:16]
