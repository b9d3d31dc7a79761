"""What the stream writes: an annotated video and a predictions log, both completed atomically
(written under a temporary name, renamed when the run ends), and the on-screen overlay."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np

from ..errors import EdgeCalibError

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


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.stem}.partial{path.suffix}")


class VideoOutput:
    def __init__(self, path: str, fps: float):
        self.path = Path(path)
        if self.path.suffix.lower() not in FOURCC:
            raise EdgeCalibError(f"--output {path}: use one of {', '.join(FOURCC)}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp, self.fps, self.writer = _temporary(self.path), fps, None

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

    def close(self):
        if self.writer is not None:
            self.writer.release()
            os.replace(self.tmp, self.path)


class PredictionLog:
    def __init__(self, path: str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = _temporary(self.path)
        self.handle = open(self.tmp, "w")

    def write(self, record: dict):
        self.handle.write(json.dumps(record) + "\n")

    def close(self):
        self.handle.close()
        os.replace(self.tmp, self.path)
