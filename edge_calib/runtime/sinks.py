"""Where each processed frame goes: the display window, video files, the predictions log and
the live view. Every sink implements one small interface, ``Sink`` (as jetson-inference's
``videoOutput`` does for its URIs): ``write(delivered)`` once per frame and
``close(complete) -> Path | None`` at the end (the file it finished, if any);
``needs_annotated`` says whether it draws on the frame."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..core.errors import EdgeCalibError
from .live_view import LiveView
from .outputs import PredictionLog, VideoOutput


@dataclass
class Delivered:
    """One processed frame as the sinks see it."""

    index: int
    domain: str
    record: dict  # the predictions line
    annotated: np.ndarray | None  # BGR with the overlay, made when a sink needs it
    status: dict = field(default_factory=dict)  # fps, frames, auto, last_switch


@runtime_checkable
class Sink(Protocol):
    """What the frame loop calls on each output (``StreamRunner``)."""

    needs_annotated: bool  # the loop draws the overlay only when some sink shows it

    def write(self, delivered: Delivered) -> None:
        """One processed frame."""

    def close(self, complete: bool = True) -> Path | None:
        """End of the run (``complete``: it ended cleanly); the file finished, if any."""


class DisplaySink:
    """An OpenCV window; its keys go to ``on_key(key, index)``."""

    needs_annotated = True

    def __init__(self, on_key):
        self.on_key = on_key

    def write(self, delivered: Delivered) -> None:
        import cv2

        cv2.imshow("edge-calib", delivered.annotated)
        key = cv2.waitKey(1) & 0xFF
        if key != 255:
            self.on_key(key, delivered.index)

    def close(self, complete: bool = True):
        import cv2

        cv2.destroyAllWindows()
        return None


class VideoSink(VideoOutput):
    needs_annotated = True

    def write(self, delivered: Delivered) -> None:
        super().write(delivered.annotated)


class PredictionSink(PredictionLog):
    needs_annotated = False

    def write(self, delivered: Delivered) -> None:
        super().write(delivered.record)


def is_live_url(target: str) -> bool:
    return target.lower().startswith("http://") or target.lower().startswith("https://")


def open_sinks(outputs: tuple[str, ...], predictions: str | None, headless: bool, fps: float,
               on_key, log) -> list[Sink]:
    """The sinks a run asked for, in a fixed order; one that cannot open closes those opened
    before it (their files are not written) and raises its one-line error."""
    sinks: list[Sink] = []
    try:
        if not headless:
            if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") \
                    and not os.environ.get("WAYLAND_DISPLAY"):
                raise EdgeCalibError("no display to open a window on; use --headless")
            sinks.append(DisplaySink(on_key))
        for target in outputs:
            if is_live_url(target):
                view = LiveView(target)
                log(f"live view at {view.url} (stream at {view.url}stream.mjpg)")
                sinks.append(view)
            else:
                sinks.append(VideoSink(target, fps))
        if predictions:
            sinks.append(PredictionSink(predictions))
    except BaseException:
        for sink in sinks:
            sink.close(False)
        raise
    return sinks
