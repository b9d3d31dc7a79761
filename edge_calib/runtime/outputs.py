"""What the stream writes: an annotated video and a predictions log, both completed atomically
(written under a temporary name of their own, renamed over the final name only when the run
delivered at least one frame; a run that delivers none leaves the previous file untouched),
and the on-screen overlay."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np

from ..core.errors import EdgeCalibError
from ..core.fileio import OutputLock, derived_path, temporary_beside

FOURCC = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "MJPG", ".mov": "mp4v"}
MIN_WIDTH = 320


def annotate(rgb: np.ndarray, lines: list[str]) -> np.ndarray:
    """BGR frame, enlarged to at least 320 px wide, with text lines drawn top-left."""
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    h, w = bgr.shape[:2]
    if w < MIN_WIDTH:
        scale = MIN_WIDTH / w
        bgr = cv2.resize(bgr, (MIN_WIDTH, int(round(h * scale))), interpolation=cv2.INTER_NEAREST)
    for i, text in enumerate(lines):
        y = 18 + 18 * i
        cv2.putText(bgr, text, (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(bgr, text, (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (80, 255, 80), 1, cv2.LINE_AA)
    return bgr


def output_path(path: str, option: str) -> Path:
    """A file path the run may write: its folder is created if missing; a folder at the path
    or a file where a folder should be is one clear error."""
    path = Path(path)
    if path.is_dir():
        raise EdgeCalibError(f"{option} {path}: is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise EdgeCalibError(f"{option} {path}: a file is in the way of folder "
                             f"{path.parent}") from None
    except PermissionError:
        raise EdgeCalibError(f"{option} {path}: no permission to create {path.parent}") from None
    return path


def _temporary(path: Path) -> Path:
    """A fresh temporary file beside ``path`` (unique: two runs never share one; OpenCV picks
    the container from the suffix, so it ends like ``path``)."""
    return temporary_beside(path, suffix=f".partial{path.suffix}")


def partial_path(path: Path) -> Path:
    """Where the output of a run that failed goes (``preds.jsonl`` -> ``preds.partial.jsonl``),
    so that it never replaces the previous good file."""
    return derived_path(path, path.stem, f".partial{path.suffix}")


def _finish(tmp: Path, path: Path, written: bool, complete: bool) -> Path | None:
    """Rename what was written into place (``path`` after a complete run, ``partial_path``
    after a failed one); drop an empty output. Returns where it went."""
    if not written:
        tmp.unlink(missing_ok=True)
        return None
    target = path if complete else partial_path(path)
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    return target


def count_frames(path: Path) -> int:
    """How many frames OpenCV decodes from a video file (0 when it cannot open it)."""
    capture, n = cv2.VideoCapture(str(path)), 0
    try:
        while capture.isOpened() and capture.grab():
            n += 1
    finally:
        capture.release()
    return n


class VideoOutput:
    def __init__(self, path: str, fps: float):
        self.path = output_path(path, "--output")
        if self.path.suffix.lower() not in FOURCC:
            raise EdgeCalibError(f"--output {path}: use one of {', '.join(FOURCC)}")
        self.lock = OutputLock(self.path, "--output")
        try:
            self.tmp = _temporary(self.path)
        except BaseException:
            self.lock.release()
            raise
        self.fps, self.writer, self.frames = fps, None, 0

    def write(self, bgr: np.ndarray):
        if self.writer is None:
            fourcc = cv2.VideoWriter_fourcc(*FOURCC[self.path.suffix.lower()])
            self.writer = cv2.VideoWriter(str(self.tmp), fourcc, self.fps,
                                          (bgr.shape[1], bgr.shape[0]))
            if not self.writer.isOpened():
                raise EdgeCalibError(f"--output {self.path}: OpenCV cannot write this format")
            self.size = (bgr.shape[1], bgr.shape[0])
        if (bgr.shape[1], bgr.shape[0]) != self.size:
            bgr = cv2.resize(bgr, self.size)
        self.writer.write(bgr)
        self.frames += 1

    def close(self, complete: bool = True) -> Path | None:
        """Rename into place if frames were written (beside it, as ``.partial``, if the run
        failed, or if the file does not read back with every frame: OpenCV's writer does not
        report a full disk, so ``failure`` then says what was lost); otherwise keep the previous
        file."""
        self.failure = None
        if self.writer is not None:
            self.writer.release()
        if self.frames > 0 and complete:
            decoded = count_frames(self.tmp)
            if decoded != self.frames:
                complete = False
                self.failure = (f"--output {self.path}: the video reads back with {decoded} of "
                                f"the {self.frames} frames written (a full disk?)")
        try:
            return _finish(self.tmp, self.path, self.frames > 0, complete)
        finally:
            self.lock.release()


class PredictionLog:
    def __init__(self, path: str):
        self.path = output_path(path, "--predictions")
        self.lock = OutputLock(self.path, "--predictions")
        try:
            self.tmp = _temporary(self.path)
            self.handle = open(self.tmp, "w")
        except BaseException:
            self.lock.release()
            raise
        self.records = 0
        self.broken = False  # a write failed (e.g. the disk is full): keep nothing

    def write(self, record: dict):
        try:
            self.handle.write(json.dumps(record) + "\n")
        except OSError:
            self.broken = True
            raise
        self.records += 1

    def close(self, complete: bool = True) -> Path | None:
        """Rename into place if records were written (beside it, as ``.partial``, if the run
        failed); otherwise keep the previous file. After a failed write (a full disk) the
        temporary file is removed, so that it does not keep the disk full."""
        try:
            try:
                self.handle.close()
            except OSError:
                self.broken = True
            if self.broken:
                self.tmp.unlink(missing_ok=True)
                return None
            return _finish(self.tmp, self.path, self.records > 0, complete)
        finally:
            self.lock.release()
