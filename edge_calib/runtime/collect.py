"""Keep unlabelled frames of a new domain on the device, for ``edge-calib adapt``.

``run --collect DIR`` starts a collection whenever ``--domain auto`` switches to ``unknown`` and
ends it when a known domain wins the window again, keeping only frames voted ``unknown``
themselves; the control commands ``collect NAME`` and ``collect stop`` keep every frame
between them. Frames are sampled: at most ``rate`` a second (by
capture time; 0: no limit), and a frame whose auto-domain features are within
``DUPLICATE`` (RMS over the 50 raw features) of the last kept one is skipped: a JPEG re-encode
of a frame moves them by about 0.001, sensor noise of 2 levels by 0.003-0.005, CamVid frames a
second apart by 0.004-0.04. Each collection is bounded by ``max_frames``, all of a run's
collections together by ``budget_bytes``.

The frame loop never waits on a disk: it hands frames to a writer thread through a bounded
queue and counts what it could not hand over as dropped. Each collection is written into a
hidden temporary folder beside its final one and renamed when it ends, with
``collection.json`` inside (format below), so ``DIR/NAME`` is always complete. A write that
fails (a full disk) ends that collection with what was written, says so in one line and in the
run summary, and the stream goes on; the run then exits non-zero.

collection.json::

    {"format": "edge-calib-collection", "format_version": 1, "domain": NAME,
     "reason": "unknown" | "command", "started": ISO, "ended": ISO, "ended_because": TEXT,
     "frames": N, "files": [NAME.jpg, ...], "bundle": {"path", "manifest_sha256", "domains"},
     "sampling": {"rate", "duplicate_rms", "skipped_rate", "skipped_duplicate", "dropped"},
     "features": {"name", "mean", "std"}}
"""

from __future__ import annotations

import datetime
import json
import os
import queue
import threading
from pathlib import Path

import cv2
import numpy as np

from ..core.errors import EdgeCalibError
from ..core.fileio import temporary_beside, write_json_atomic
from ..core.names import check_domain_name
from ..imaging.domain_features import NAME as FEATURES_NAME

FORMAT, FORMAT_VERSION = "edge-calib-collection", 1
FILE = "collection.json"
DUPLICATE = 0.005
QUEUE = 16  # frames waiting for the writer; more are dropped (counted)
JPEG_QUALITY = 95


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class FrameCollector:
    def __init__(self, root: str | Path, max_frames: int, budget_bytes: int, rate: float,
                 bundle, log):
        """``bundle()`` describes the bundle running now (for each collection's record)."""
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = temporary_beside(self.root / "probe")
            probe.unlink()
        except OSError as exc:
            raise EdgeCalibError(f"--collect {root}: cannot write there ({exc.strerror})") \
                from None
        self.max_frames, self.budget_bytes, self.rate = max_frames, budget_bytes, rate
        self.bundle, self.log = bundle, log
        self.current: dict | None = None  # the loop thread's view of the open collection
        self.counts = {"kept": 0, "written": 0, "bytes": 0, "dropped": 0, "skipped_rate": 0,
                       "skipped_duplicate": 0}
        self.finished: list[dict] = []  # summaries of collections written (or that failed)
        self.error: str | None = None
        self.full = False  # the disk budget is spent: no further collection starts
        self._slots = threading.Semaphore(QUEUE)
        self._queue: queue.Queue = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, name="collect", daemon=True)
        self._writer.start()

    # -- the loop's side ----------------------------------------------------------------------
    def start(self, name: str, reason: str) -> dict:
        """Open a collection named ``name`` (an open one is ended first)."""
        try:
            check_domain_name(name, "collection")
        except EdgeCalibError as exc:
            return {"ok": False, "error": str(exc)}
        if (self.root / name).exists() or any(c["domain"] == name for c in self.finished) \
                or (self.current is not None and self.current["domain"] == name):
            return {"ok": False, "error": f"collection {name!r} already exists in {self.root}; "
                                          "choose another name"}
        if self.full or self.error is not None:
            return {"ok": False, "error": "collection is off: " + (
                self.error or f"the disk budget of {self.budget_bytes} bytes is spent")}
        self.stop("another collection started")
        self.current = {"domain": name, "reason": reason, "kept": 0, "last_time": None,
                        "last_features": None}
        self._queue.put(("start", name, reason, self.bundle()))
        self.log(f"collecting frames of {name!r} ({reason}) into {self.root / name}")
        return {"ok": True, "collecting": name}

    def stop(self, because: str) -> dict:
        """End the open collection (its folder appears complete once the writer has it)."""
        if self.current is None:
            return {"ok": False, "error": "no collection is open"}
        name, self.current = self.current["domain"], None
        self._queue.put(("stop", because))
        return {"ok": True, "stopped": name}

    def offer(self, frame: np.ndarray, features: np.ndarray, captured: float) -> None:
        """One RGB frame and its auto-domain features: kept, skipped or dropped, never waited
        for."""
        c = self.current
        if c is None:
            return
        if c["kept"] >= self.max_frames:
            self.stop(f"--collect-max {self.max_frames} frames reached")
            return
        if self.rate > 0 and c["last_time"] is not None \
                and captured - c["last_time"] < 1 / self.rate:
            self.counts["skipped_rate"] += 1
            return
        if c["last_features"] is not None and \
                np.sqrt(np.mean((features - c["last_features"]) ** 2)) < DUPLICATE:
            self.counts["skipped_duplicate"] += 1
            return
        if not self._slots.acquire(blocking=False):
            self.counts["dropped"] += 1
            return
        c["kept"] += 1
        c["last_time"], c["last_features"] = captured, features
        self.counts["kept"] += 1
        self._queue.put(("frame", frame, features))

    @property
    def collecting(self) -> str | None:
        """The name of the open collection, if any."""
        return None if self.current is None else self.current["domain"]

    def status(self) -> dict:
        return {"dir": str(self.root), "collecting": self.collecting, **self.counts,
                "collections": len(self.finished), "full": self.full, "error": self.error}

    def close(self) -> dict:
        """End the open collection, wait for the writer, return the summary."""
        self.stop("the run ended")
        self._queue.put(("close",))
        self._writer.join()
        return {**self.status(), "finished": self.finished}

    # -- the writer thread ------------------------------------------------------------------
    def _write_loop(self) -> None:
        open_ = None  # {"domain", "reason", "tmp", "files", "features", "started"}
        while True:
            item = self._queue.get()
            if item[0] == "close":
                return
            if item[0] == "start":
                open_ = self._open(*item[1:])
            elif item[0] == "stop":
                if open_ is not None:
                    self._finish(open_, item[1])
                open_ = None
            else:
                try:
                    if open_ is not None and not open_.get("failed"):
                        self._write_frame(open_, item[1], item[2])
                finally:
                    self._slots.release()

    def _open(self, name: str, reason: str, bundle: dict) -> dict | None:
        try:
            tmp = temporary_beside(self.root / name, suffix=".partial", folder=True)
        except OSError as exc:
            self._fail(f"cannot open a collection in {self.root} ({exc.strerror})")
            return None
        return {"domain": name, "reason": reason, "tmp": tmp, "files": [], "features": [],
                "started": now(), "bundle": bundle}

    def _write_frame(self, c: dict, frame: np.ndarray, features: np.ndarray) -> None:
        ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR) if frame.ndim == 3
                               and frame.shape[-1] == 3 else frame,
                               [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            return
        data = jpg.tobytes()
        if self.counts["bytes"] + len(data) > self.budget_bytes:
            self.full = True
            self.log(f"collection {c['domain']!r}: the disk budget of {self.budget_bytes} bytes "
                     f"is reached after {len(c['files'])} frames; they are kept, collection "
                     "stops")
            self._finish(c, "the disk budget is reached")
            c["failed"] = True  # nothing more goes into it
            if self.current is not None and self.current["domain"] == c["domain"]:
                self.current = None
            return
        name = f"{len(c['files']):06d}.jpg"
        try:
            with open(c["tmp"] / name, "wb") as f:
                f.write(data)
        except OSError as exc:
            (c["tmp"] / name).unlink(missing_ok=True)
            self._fail(f"collection {c['domain']!r}: cannot write a frame ({exc.strerror}); "
                       f"the {len(c['files'])} frames before it are kept")
            self._finish(c, f"a write failed ({exc.strerror})")
            c["failed"] = True
            return
        c["files"].append(name)
        c["features"].append(features)
        self.counts["written"] += 1
        self.counts["bytes"] += len(data)

    def _finish(self, c: dict, because: str) -> None:
        if c.get("failed"):
            return
        features = np.asarray(c["features"], float)
        record = {"format": FORMAT, "format_version": FORMAT_VERSION, "domain": c["domain"],
                  "reason": c["reason"], "started": c["started"], "ended": now(),
                  "ended_because": because, "frames": len(c["files"]), "files": c["files"],
                  "bundle": c["bundle"],
                  "sampling": {"rate": self.rate, "duplicate_rms": DUPLICATE,
                               **{k: self.counts[k] for k in ("skipped_rate", "skipped_duplicate",
                                                              "dropped")}},
                  "features": {"name": FEATURES_NAME, **(
                      {"mean": features.mean(axis=0).round(6).tolist(),
                       "std": features.std(axis=0).round(6).tolist()} if len(features)
                      else {"mean": None, "std": None})}}
        final = self.root / c["domain"]
        try:
            write_json_atomic(c["tmp"] / FILE, record)
            if final.exists():
                raise FileExistsError(f"{final} appeared meanwhile")
            os.rename(c["tmp"], final)
        except OSError as exc:
            self._fail(f"collection {c['domain']!r}: cannot finish it ({exc}); its frames are "
                       f"in {c['tmp']}")
            self.finished.append({"domain": c["domain"], "frames": len(c["files"]),
                                  "folder": str(c["tmp"]), "complete": False})
            return
        self.finished.append({"domain": c["domain"], "frames": len(c["files"]),
                              "folder": str(final), "complete": True, "ended_because": because})
        self.log(f"collection {c['domain']!r}: {len(c['files'])} frames in {final} ({because})")

    def _fail(self, message: str) -> None:
        self.error = self.error or message
        self.log(message)


def read_collection(folder: str | Path) -> dict:
    """A finished collection's record, checked: one line naming what is wrong."""
    path = Path(folder) / FILE
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise EdgeCalibError(f"{folder}: not a finished collection (no {FILE}; an interrupted "
                             "one is a hidden .partial folder beside it)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgeCalibError(f"{path}: unreadable ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise EdgeCalibError(f"{path}: not an edge-calib collection record")
    if record.get("format_version") != FORMAT_VERSION:
        raise EdgeCalibError(f"{path}: collection format {record.get('format_version')} is not "
                             f"supported (this edge-calib reads {FORMAT_VERSION})")
    return record
