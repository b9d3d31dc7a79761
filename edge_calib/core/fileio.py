"""Atomic writes and file hashing (numpy-free, torch-free: used by both worlds)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


NAME_MAX = 255  # bytes in one file name (ext4, xfs, btrfs, tmpfs)


def fitting_name(name: str, room: int = NAME_MAX) -> str:
    """``name`` when it takes at most ``room`` bytes, else its first bytes (whole characters)
    and ``~`` with 8 hex digits of its sha256: the same long name always gives the same short
    one, so a file derived from it is found again (a resumed training's state)."""
    data = name.encode()
    if len(data) <= room:
        return name
    tag = "~" + hashlib.sha256(data).hexdigest()[:8]
    return data[:room - len(tag)].decode(errors="ignore") + tag


def derived_path(path: str | Path, stem: str, ending: str) -> Path:
    """``stem + ending`` beside ``path`` (``X.calib`` + ``.state.pt``), the stem shortened by
    ``fitting_name`` so the whole name fits in NAME_MAX bytes."""
    return Path(path).with_name(fitting_name(stem, NAME_MAX - len(ending.encode())) + ending)


def temporary_beside(path: str | Path, suffix: str = ".tmp", folder: bool = False) -> Path:
    """A new, unique temporary file (or folder) beside ``path``, named
    ``.NAME.PID.RANDOM<suffix>`` (NAME shortened so that it fits NAME_MAX bytes). Leftovers of
    processes that no longer run (a killed build or run) are removed first, so temporary files
    never pile up."""
    path = Path(path)
    # "." NAME "." PID(<= 10) "." RANDOM(8) SUFFIX
    prefix = f".{fitting_name(path.name, NAME_MAX - 21 - len(suffix.encode()))}."
    for old in path.parent.glob(f"{glob_escape(prefix)}*{glob_escape(suffix)}"):
        pid = old.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    old.unlink()
    prefix += f"{os.getpid()}."
    if folder:
        return Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=path.parent))
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


class OutputLock:
    """One writer per output: an exclusive flock on ``.NAME.lock`` beside ``path``, held from
    the start of the command that writes it until ``release`` (or the process's end). A second
    process asking for the same output is refused in one line naming ``option``."""

    def __init__(self, path: str | Path, option: str):
        from .errors import EdgeCalibError

        path = Path(path)
        self.file = derived_path(path, f".{path.name}", ".lock")
        self.fd: int | None = None
        while self.fd is None:
            try:
                fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError:
                return  # a folder nobody can write into fails later, with its own message
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise EdgeCalibError(f"{option} {path}: another edge-calib process is writing "
                                     "it; wait for it to finish or choose another name") from None
            if _same_file(fd, self.file):
                self.fd = fd
            else:  # its holder released (and removed) it after we opened it: take a fresh one
                os.close(fd)

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.file)
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    Readers see either the previous file or the complete new one, never a half-written file.
    On an exception the temporary file is removed and the previous file is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_beside(path)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | Path, obj) -> None:
    """Strict JSON (a NaN or infinity is an error, never written as the non-JSON ``NaN``)."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())


@contextlib.contextmanager
def atomic_directory(path: str | Path, force: bool = False):
    """Yield a temporary folder beside ``path``; on success it replaces ``path``.

    Without ``force`` an existing ``path`` is an error (raised by the caller beforehand), and
    one that appears while the folder is built (a second writer) is never replaced: the rename
    fails and this build's folder is removed. With ``force`` the old folder is swapped out
    only after the new one is complete.
    """
    from .errors import EdgeCalibError

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_beside(path, folder=True)
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if not force:
            try:  # atomic, and refused onto a folder that is not empty
                if path.exists():
                    raise FileExistsError(path)
                os.rename(tmp, path)
            except OSError:
                raise EdgeCalibError(f"{path} appeared while this one was being written "
                                     "(another writer?); it was left as it is and nothing "
                                     "was written (pass --force to replace it)") from None
        elif path.exists():
            old = derived_path(path, f".{path.name}", ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def refuse_writing_over_inputs(outputs: dict, inputs: dict) -> None:
    """No output may be one of the command's own inputs: the same path, or another name for the
    same file (a symbolic or hard link). ``outputs``/``inputs``: {option: path or None}; an
    output or input that does not exist yet cannot be the same file."""
    from .errors import EdgeCalibError

    for out_option, out in outputs.items():
        if out is None or not os.path.exists(out):
            continue
        for in_option, source in inputs.items():
            try:
                same = source is not None and os.path.samefile(out, source)
            except OSError:
                continue
            if same:
                how = "" if Path(out).resolve() == Path(source).resolve() else \
                    " (another name for the same file)"
                raise EdgeCalibError(f"{out_option} {out} is the {in_option} it reads{how}; "
                                     "write the output elsewhere")
