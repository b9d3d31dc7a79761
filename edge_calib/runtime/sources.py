"""Frame sources from jetson-inference-style URIs.

``--camera N`` (an OpenCV device index), or ``--input`` with ``/dev/videoN``,
``v4l2:///dev/videoN``, ``csi://N`` (nvarguscamerasrc on Jetson), a video file, a folder of
images, ``rtsp://`` / ``http(s)://`` streams, or a raw GStreamer pipeline (contains ``!``).
Every source returns RGB uint8 frames.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..core.errors import EdgeCalibError
from ..data.formats import IMAGE_SUFFIXES, imread, list_frames


@dataclass(frozen=True)
class SourceSpec:
    """What to open: kind is camera, v4l2, csi, file, folder, stream or gstreamer."""

    kind: str
    target: str | int
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    loop: bool = False

    @property
    def live(self) -> bool:
        """Live sources reconnect when they stop; files and folders end."""
        return self.kind in ("camera", "v4l2", "csi", "stream", "gstreamer")

    def describe(self) -> str:
        return {"camera": f"camera {self.target}", "v4l2": f"V4L2 device {self.target}",
                "csi": f"CSI camera {self.target}", "file": f"video file {self.target}",
                "folder": f"image folder {self.target}", "stream": f"stream {self.target}",
                "gstreamer": f"GStreamer pipeline '{self.target}'"}[self.kind]


def parse_source(camera: int | None, uri: str | None, width=None, height=None, fps=None,
                 loop=False) -> SourceSpec:
    if (camera is None) == (uri is None):
        raise EdgeCalibError("give exactly one of --camera N or --input URI")
    common = dict(width=width, height=height, fps=fps, loop=loop)
    if camera is not None:
        return SourceSpec("camera", int(camera), **common)
    if "!" in uri:
        return SourceSpec("gstreamer", uri, **common)
    match = re.fullmatch(r"csi://(\d+)", uri)
    if match:
        return SourceSpec("csi", int(match.group(1)), **common)
    match = re.fullmatch(r"(?:v4l2://)?(/dev/video\d+)", uri)
    if match:
        return SourceSpec("v4l2", match.group(1), **common)
    if re.match(r"(rtsp|rtmp|http|https|udp|tcp)://", uri):
        return SourceSpec("stream", uri, **common)
    path = Path(uri[len("file://"):] if uri.startswith("file://") else uri).expanduser()
    if path.is_dir():
        return SourceSpec("folder", str(path), **common)
    if path.is_file():
        return SourceSpec("file", str(path), **common)
    raise EdgeCalibError(f"input {uri!r} is not a camera, stream, video file or image folder "
                         "that exists")


def csi_pipeline(sensor: int, width: int, height: int, fps: float) -> str:
    """nvarguscamerasrc -> BGR appsink (Jetson CSI cameras)."""
    return (f"nvarguscamerasrc sensor-id={sensor} ! video/x-raw(memory:NVMM), width={width}, "
            f"height={height}, framerate={int(fps)}/1 ! nvvidconv ! video/x-raw, format=BGRx ! "
            "videoconvert ! video/x-raw, format=BGR ! appsink drop=1 max-buffers=2")


class FolderReader:
    """Images of a folder and its subfolders in path order (a camera's frames as they come:
    one folder per sequence or per day), as a VideoCapture-like reader."""

    def __init__(self, folder: str, loop: bool):
        self.files = list_frames(folder)
        if not self.files:
            raise EdgeCalibError(f"image folder {folder} has no images (looked for "
                                 f"{', '.join(IMAGE_SUFFIXES)} in it and its subfolders)")
        self.loop, self.position = loop, 0
        self.expected = len(self.files)
        self.refused: set = set()  # files over the pixel cap, named once each on stderr

    def read(self) -> tuple[bool, np.ndarray | None, bool, int]:
        """(ended, BGR frame, failed, corrupt frames skipped): unreadable files are skipped."""
        skipped = 0
        while True:
            if self.position >= len(self.files):
                if not self.loop:
                    return True, None, False, skipped
                self.position = 0
            path = self.files[self.position]
            self.position += 1
            try:
                frame = imread(path, cv2.IMREAD_COLOR)  # oversized or truncated: skipped
            except EdgeCalibError as exc:
                if path not in self.refused:
                    self.refused.add(path)
                    print(f"[edge-calib] skipped {exc}", file=sys.stderr, flush=True)
                frame = None
            if frame is not None:
                return False, frame, False, skipped
            skipped += 1
            if skipped >= len(self.files):
                return True, None, False, skipped

    def release(self):
        pass


class CaptureReader:
    """cv2.VideoCapture, telling a live source that stopped from a file's corrupt frames and
    its end (a truncated file simply ends early; ``expected`` says how long it claimed to be)."""

    FILE_RETRIES = 5

    def __init__(self, cap: cv2.VideoCapture, spec: SourceSpec):
        self.cap, self.spec = cap, spec
        self.expected = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if spec.kind == "file" else None

    def read(self) -> tuple[bool, np.ndarray | None, bool, int]:
        """(ended, BGR frame, failed (live source stopped), corrupt frames skipped)."""
        ok, frame = self.cap.read()
        if ok and frame is not None:
            return False, frame, False, 0
        if self.spec.kind != "file":
            return False, None, True, 0
        for attempt in range(1, self.FILE_RETRIES):  # a corrupt frame, or the end?
            ok, frame = self.cap.read()
            if ok and frame is not None:
                return False, frame, False, attempt
        if self.spec.loop:
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self.cap.read()
            if ok:
                return False, frame, False, 0
        return True, None, False, 0

    def release(self):
        self.cap.release()


def open_source(spec: SourceSpec, timeout_ms: int = 10000):
    """Open the source once; a source that cannot be opened is one clear error naming what
    was tried. Network streams give up opening or reading after ``timeout_ms`` (OpenCV's
    FFmpeg default is 30 s), so a stream that stalls with its connection open is noticed."""
    if spec.kind == "folder":
        return FolderReader(spec.target, spec.loop)
    attempts = []
    if spec.kind == "camera":
        attempts = [(f"/dev/video{spec.target} via V4L2", spec.target, cv2.CAP_V4L2),
                    (f"index {spec.target} via any backend", spec.target, cv2.CAP_ANY)]
    elif spec.kind == "v4l2":
        attempts = [(f"{spec.target} via V4L2", spec.target, cv2.CAP_V4L2)]
    elif spec.kind == "csi":
        pipeline = csi_pipeline(spec.target, spec.width or 1280, spec.height or 720, spec.fps or 30)
        attempts = [(f"GStreamer {pipeline}", pipeline, cv2.CAP_GSTREAMER)]
    elif spec.kind == "gstreamer":
        attempts = [("GStreamer", spec.target, cv2.CAP_GSTREAMER)]
    elif spec.kind == "stream":
        attempts = [("FFmpeg", spec.target, cv2.CAP_FFMPEG)]
    else:
        attempts = [("OpenCV", spec.target, cv2.CAP_ANY)]
    params = ([cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC,
               timeout_ms] if spec.kind == "stream" else [])
    for _, target, backend in attempts:
        cap = cv2.VideoCapture(target, backend, params)
        if cap.isOpened():
            if spec.kind in ("camera", "v4l2"):
                for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, spec.width),
                                    (cv2.CAP_PROP_FRAME_HEIGHT, spec.height),
                                    (cv2.CAP_PROP_FPS, spec.fps)):
                    if value:
                        cap.set(prop, value)
            return CaptureReader(cap, spec)
        cap.release()
    tried = "; ".join(a[0] for a in attempts)
    hint = ""
    if spec.kind in ("csi", "gstreamer") and re.search(r"GStreamer:\s+NO", cv2.getBuildInformation()):
        hint = " (this OpenCV was built without GStreamer)"
    raise EdgeCalibError(f"cannot open {spec.describe()}{hint}; tried: {tried}")
