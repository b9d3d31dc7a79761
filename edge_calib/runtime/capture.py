"""Capture in its own thread, with a bounded queue that drops the oldest frame under load,
reconnection with back-off for live sources, and counters for drops and corrupt frames."""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass

import cv2
import numpy as np

from ..core.errors import EdgeCalibError
from .sources import SourceSpec, open_source


@dataclass
class Frame:
    index: int
    rgb: np.ndarray
    captured: float  # time.perf_counter() when it was read
    read_ms: float  # time spent reading and decoding it


class CaptureThread:
    """Reads frames into a bounded deque. ``get`` returns the oldest queued frame, or None once
    the source has ended (or failed for good); ``error`` then says why.

    Live sources (cameras, streams) and ``realtime`` files never wait for the consumer: when
    the queue is full the oldest frame is dropped and counted. Files and folders otherwise
    wait, so every frame is processed. ``realtime`` also paces a file at ``fps``.
    """

    def __init__(self, spec: SourceSpec, queue_size: int = 4, reconnect_timeout: float = 10.0,
                 max_backoff: float = 2.0, realtime: bool = False, log=print):
        self.spec, self.reconnect_timeout, self.max_backoff = spec, reconnect_timeout, max_backoff
        self.drop_when_full = spec.live or realtime
        self.pace = (1.0 / (spec.fps or 30.0)) if (realtime and not spec.live) else 0.0
        self.timeout_ms = int(max(1.0, reconnect_timeout) * 1000)  # a stalled read gives up then
        self.reader = open_source(spec, self.timeout_ms)  # a clear error if it cannot open
        self.queue: collections.deque[Frame] = collections.deque()
        self.queue_size = queue_size
        self.cond = threading.Condition()
        self.stopped = threading.Event()
        self.ended = False
        self.error: str | None = None
        self.log = log
        self.counts = {"captured": 0, "dropped": 0, "corrupt": 0, "missing": 0, "reconnects": 0}
        self.expected = getattr(self.reader, "expected", None)
        self.thread = threading.Thread(target=self._run, name="capture", daemon=True)

    def start(self) -> "CaptureThread":
        self.thread.start()
        return self

    def _push(self, frame: Frame):
        with self.cond:
            while not self.drop_when_full and len(self.queue) >= self.queue_size:
                if self.stopped.is_set():
                    return
                self.cond.wait(0.1)
            if len(self.queue) >= self.queue_size:
                self.queue.popleft()
                self.counts["dropped"] += 1
            self.queue.append(frame)
            self.cond.notify()

    def _reconnect(self) -> bool:
        """Reopen a live source with exponential back-off until ``reconnect_timeout``."""
        self.reader.release()
        deadline, delay = time.monotonic() + self.reconnect_timeout, 0.1
        while not self.stopped.is_set() and time.monotonic() < deadline:
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            try:
                self.reader = open_source(self.spec, self.timeout_ms)
            except EdgeCalibError:
                delay = min(delay * 2, self.max_backoff)
                continue
            self.counts["reconnects"] += 1
            self.log(f"reconnected to {self.spec.describe()}")
            return True
        return False

    def _run(self):
        index = 0
        next_due = time.perf_counter()
        try:
            while not self.stopped.is_set():
                if self.pace:
                    next_due += self.pace
                    time.sleep(max(0.0, next_due - time.perf_counter()))
                started = time.perf_counter()
                ended, bgr, failed, skipped = self.reader.read()
                self.counts["corrupt"] += skipped
                index += skipped  # frame indices stay source positions
                if ended:
                    self._check_complete()
                    break
                if failed:
                    self.log(f"{self.spec.describe()} stopped delivering; reconnecting")
                    if not self._reconnect():
                        if not self.stopped.is_set():
                            self.error = (f"{self.spec.describe()} stopped delivering and did not "
                                          f"come back within --reconnect-timeout "
                                          f"{self.reconnect_timeout:g}s")
                        break
                    continue
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if bgr.ndim == 3 else \
                    cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
                now = time.perf_counter()
                self._push(Frame(index, rgb, now, (now - started) * 1000))
                self.counts["captured"] += 1
                index += 1
        except Exception as exc:  # e.g. out of memory while decoding: the run must not pass
            reason = " ".join(str(exc).split()) or type(exc).__name__
            self.error = f"reading {self.spec.describe()} failed: {reason}"
        finally:
            self.reader.release()
            with self.cond:
                self.ended = True
                self.cond.notify_all()

    def _check_complete(self):
        """A file that ends before the frame count in its header was truncated, or OpenCV
        dropped frames it could not decode: count them and say so."""
        seen = self.counts["captured"] + self.counts["corrupt"]
        if self.expected and not self.spec.loop and seen < self.expected:
            self.counts["missing"] = self.expected - seen
            self.log(f"warning: {self.spec.describe()} ended after {seen} of the "
                     f"{self.expected} frames its header announces (truncated or undecodable "
                     f"frames: {self.counts['missing']} missing)")

    def get(self, timeout: float = 0.5) -> Frame | None:
        """The next frame; blocks while the source is running; None when it has ended or
        ``interrupt`` was called."""
        with self.cond:
            while not self.queue:
                if self.ended or self.stopped.is_set():
                    return None
                self.cond.wait(timeout)
            frame = self.queue.popleft()
            self.cond.notify_all()
            return frame

    def interrupt(self):
        """Wake ``get`` and stop reading (safe from a signal handler)."""
        self.stopped.set()

    def stop(self, wait: float = 1.0):
        """Stop reading; a reader blocked inside OpenCV (a stalled stream) is left to its daemon
        thread rather than waited for."""
        self.stopped.set()
        self.thread.join(timeout=wait)
