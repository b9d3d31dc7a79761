"""``edge-calib run``: capture -> pre-process -> calibrator -> classifier -> post-process.

All calibrators of the bundle are loaded at start; switching domain (``--domain NAME``, keys,
the control channel, or ``--domain auto``) changes which one runs for the next frame. A
``reload`` (or a changed bundle with ``--watch``) loads the bundle again in the background and
swaps it in only if it passes its manifest check and a check on the last frame.
"""

from __future__ import annotations

import collections
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

from ..core.errors import EdgeCalibError
from ..core.stats import summarize
from ..deploy.bundle import MANIFEST, MANIFEST_HASH, open_bundle
from ..engines import check_engines, open_engines
from .capture import CaptureThread
from .control import ControlChannel
from .domain_auto import AutoDomain, load_domain_model
from .outputs import PredictionLog, VideoOutput, annotate
from .postprocess import output_for
from .sources import SourceSpec
from .timing import StageTimes

SWITCH_LOG = 1000  # the last switches kept for the summary (all are counted)


@dataclass
class RunOptions:
    deploy: str
    domain: str
    backend: str = "onnxruntime"
    headless: bool = False
    output: str | None = None
    predictions: str | None = None
    control: str | None = None
    watch: bool = False
    verbose: bool = False
    report_every: float = 5.0
    queue_size: int = 4
    reconnect_timeout: float = 10.0
    realtime: bool = False
    max_frames: int | None = None
    threads: int = 0
    separate: bool = False
    auto_window: int = 15
    auto_threshold: float = 0.7


def log(message: str) -> None:
    print(f"[edge-calib] {message}", file=sys.stderr, flush=True)


class StreamRunner:
    def __init__(self, options: RunOptions, source: SourceSpec):
        self.opts = options
        self.bundle = open_bundle(options.deploy)  # refuses a bundle that fails its check
        self.spec = self.bundle.spec
        self.engines = self._load_checked(self.bundle, None)
        self.auto = None
        if options.domain == "auto":
            entry = self.bundle.manifest.domain_classifier
            if entry is None:
                raise EdgeCalibError("--domain auto: this bundle has no domain classifier "
                                     "(build it with several domains and --auto-domain)")
            self.auto = AutoDomain(load_domain_model(self.bundle.path(entry.file),
                                                      self.bundle.domains),
                                   self.spec.lo[0], self.spec.hi[0], options.auto_window,
                                   options.auto_threshold)
            self.domain = self.bundle.default_domain
        else:
            self.bundle.domain(options.domain)  # unknown: lists the bundle's domains
            self.domain = options.domain
        if not options.headless and sys.platform.startswith("linux") and not os.environ.get("DISPLAY") \
                and not os.environ.get("WAYLAND_DISPLAY"):
            raise EdgeCalibError("no display to open a window on; use --headless")
        self.source = source
        self.capture = CaptureThread(source, options.queue_size, options.reconnect_timeout,
                                     realtime=options.realtime, log=log)
        self.video = VideoOutput(options.output, source.fps or 30.0) if options.output else None
        self.predictions = PredictionLog(options.predictions) if options.predictions else None
        self.control = ControlChannel(options.control) if options.control else None
        self.output = output_for(self.bundle.task, self.bundle.labels)
        self.times = StageTimes()
        self.switches: collections.deque[dict] = collections.deque(maxlen=SWITCH_LOG)
        self.switch_count = 0
        self._pending_switch = None
        self.domain_frames: dict[str, int] = {}
        self.reloads: collections.deque[dict] = collections.deque(maxlen=SWITCH_LOG)
        self._reloaded = None
        self._reload_thread = None
        self._last_x = np.zeros((1, *self.spec.shape), np.float32)
        self.stop_requested = False
        self.partial_outputs: list[str] = []  # outputs of a failed run, kept beside the old ones

    # -- engines and reload ----------------------------------------------------------------
    def _load_checked(self, bundle, x):
        """Load every domain's engines and check each on one frame (finite outputs, bounded
        calibrator); this also warms every session up."""
        engines = open_engines(bundle, self.opts.backend, self.opts.threads,
                               fused=not self.opts.separate, check=False)
        try:
            check_engines(engines, bundle, x)
        except BaseException:
            engines.close()
            raise
        return engines

    def request_reload(self, reason: str):
        if self._reload_thread is not None and self._reload_thread.is_alive():
            return {"ok": False, "error": "a reload is already running"}

        def work():
            started = time.perf_counter()
            try:
                bundle = open_bundle(self.opts.deploy)
                if bundle.spec != self.bundle.spec:
                    raise EdgeCalibError("the new bundle has another input spec")
                engines = self._load_checked(bundle, self._last_x)
                self._reloaded = (bundle, engines, reason, time.perf_counter() - started)
            except Exception as exc:  # keep the old engines, log why
                self.reloads.append({"ok": False, "reason": reason, "error": str(exc)})
                log(f"reload ({reason}) refused, the previous bundle keeps running: {exc}")

        self._reload_thread = threading.Thread(target=work, name="reload", daemon=True)
        self._reload_thread.start()
        return {"ok": True, "reloading": True}

    def _apply_reload(self, index: int):
        if self._reloaded is None:
            return
        bundle, engines, reason, seconds = self._reloaded
        self._reloaded = None
        replaced, self.bundle, self.engines = self.engines, bundle, engines
        replaced.close()  # the old sessions are never used again
        if self.domain not in bundle.domains:
            self.domain = bundle.domains[0]
        self.reloads.append({"ok": True, "reason": reason, "frame": index,
                             "load_s": round(seconds, 3)})
        log(f"reloaded the bundle ({reason}) at frame {index}")

    def _watch(self):
        def snapshot():
            paths = [os.path.join(self.opts.deploy, name) for name in (MANIFEST, MANIFEST_HASH)] + [
                os.path.join(self.opts.deploy, p) for p in self.bundle.manifest.files]
            out = []
            for p in paths:
                try:
                    st = os.stat(p)
                    out.append((p, st.st_mtime_ns, st.st_ino, st.st_size))
                except OSError:
                    out.append((p, None, None, None))
            return out

        last = snapshot()
        while not self.stop_requested:
            time.sleep(0.5)
            now = snapshot()
            if now != last:
                last = now
                time.sleep(0.2)  # let a writer finish
                self.request_reload("bundle changed on disk")

    # -- switching --------------------------------------------------------------------------
    def switch(self, name: str, by: str, index: int, requested: float | None = None) -> dict:
        """Run ``name``'s calibrator from the next frame. ``requested`` (perf_counter) is when
        the request arrived; the switch log says how long until the first frame computed with
        the new calibrator was done, and how many frames capture dropped meanwhile."""
        if name not in self.bundle.domains:
            return {"ok": False, "error": f"unknown domain {name!r}; this bundle has: "
                                          f"{', '.join(self.bundle.domains)}"}
        previous, self.domain = self.domain, name
        if previous != name:
            self.switch_count += 1
            self._pending_switch = {"frame": index, "from": previous, "to": name, "by": by,
                                    "requested": requested or time.perf_counter(),
                                    "dropped_before": self.capture.counts["dropped"]}
            if self.opts.verbose:
                log(f"domain {previous} -> {name} ({by}) at frame {index}")
        return {"ok": True, "domain": name}

    def _switch_done(self, domain: str) -> None:
        """The first frame with the new calibrator is done: log the switch with its figures."""
        entry, self._pending_switch = self._pending_switch, None
        if entry is None or entry["to"] != domain:
            return
        entry["to_first_frame_ms"] = (time.perf_counter() - entry.pop("requested")) * 1e3
        entry["dropped_meanwhile"] = self.capture.counts["dropped"] - entry.pop("dropped_before")
        self.switches.append(entry)

    def _handle(self, command, index: int):
        words = command.text.split()
        if not words:
            reply = {"ok": False, "error": "empty command"}
        elif words[0] == "domain" and len(words) == 2:
            if self.auto is not None:
                self.auto = None  # a manual choice turns automatic switching off
            reply = self.switch(words[1], "control", index, command.received)
        elif words[0] == "status":
            reply = {"ok": True, "domain": self.domain, "domains": self.bundle.domains,
                     "frames": self.times.frames, "fps": round(self.times.fps(), 2),
                     "auto": self.auto is not None, **self.capture.counts}
        elif words[0] == "reload":
            reply = self.request_reload("reload command")
        elif words[0] == "quit":
            self.stop_requested = True
            reply = {"ok": True, "stopping": True}
        else:
            reply = {"ok": False, "error": f"unknown command {command.text!r}; use domain NAME, "
                                           "status, reload or quit"}
        command.reply.put(reply)

    def _key(self, key: int, index: int):
        domains = self.bundle.domains
        if key in (ord("q"), 27):
            self.stop_requested = True
        elif ord("1") <= key <= ord("9") and key - ord("1") < len(domains):
            self.auto = None
            self.switch(domains[key - ord("1")], "key", index)
        elif key in (ord("n"), ord("p")):
            self.auto = None
            step = 1 if key == ord("n") else -1
            self.switch(domains[(domains.index(self.domain) + step) % len(domains)], "key", index)

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> dict:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                signal.signal(sig, lambda *_: self.request_stop())
            except ValueError:  # not in the main thread (tests): rely on quit / max_frames
                pass
        if self.opts.watch:
            threading.Thread(target=self._watch, name="watch", daemon=True).start()
        self.capture.start()
        started = time.perf_counter()
        last_report = started
        self.times = StageTimes()
        index = 0
        completed = False
        try:
            while not self.stop_requested:
                if self.opts.max_frames is not None and index >= self.opts.max_frames:
                    break
                frame = self.capture.get()
                if frame is None:
                    break
                if self.control is not None:
                    for command in self.control.pending():
                        self._handle(command, index)
                self._apply_reload(index)
                t0 = time.perf_counter()
                x = self.spec.preprocess(frame.rgb[None])
                self._last_x = x
                t1 = time.perf_counter()
                auto_pred = None
                if self.auto is not None:
                    auto_pred = self.auto.predict(x)
                    target = self.auto.update(self.domain, auto_pred[0])
                    if target is not None:
                        self.switch(target, "auto", index)
                domain = self.domain
                logits, stage = self.engines.infer(domain, x)
                t2 = time.perf_counter()
                result = self.output.summarise(logits, frame.rgb.shape)
                times = {"capture": frame.read_ms, "pre": (t1 - t0) * 1e3, **stage}
                if self.video is not None or not self.opts.headless:
                    network = " ".join(f"{k[:3]} {v:.2f}" for k, v in stage.items())
                    shown = annotate(self.output.draw(frame.rgb, result), [
                        f"{self.output.headline(result)}  domain {domain}"
                        + (" [auto]" if self.auto is not None else ""),
                        f"{self.times.fps():.1f} FPS  pre {times['pre']:.2f}  {network} ms"])
                    if self.video is not None:
                        self.video.write(shown)
                    if not self.opts.headless:
                        import cv2

                        cv2.imshow("edge-calib", shown)
                        key = cv2.waitKey(1) & 0xFF
                        if key != 255:
                            self._key(key, index)
                t3 = time.perf_counter()
                if self._pending_switch is not None:
                    self._switch_done(domain)
                times["post"] = (t3 - t2) * 1e3
                times["total"] = (t3 - t0) * 1e3 + frame.read_ms
                self.times.add(times)
                self.domain_frames[domain] = self.domain_frames.get(domain, 0) + 1
                if self.predictions is not None:
                    record = {"index": frame.index, "time": round(frame.captured - started, 6),
                              "domain": domain, **result,
                              "latency_ms": {k: round(v, 4) for k, v in times.items()}}
                    if auto_pred is not None:
                        record["auto"] = {"predicted": auto_pred[0], "p": round(auto_pred[1], 4)}
                    self.predictions.write(record)
                index += 1
                if self.opts.verbose and time.perf_counter() - last_report >= self.opts.report_every:
                    last_report = time.perf_counter()
                    log("\n" + self.times.report(self.counters_text()))
            completed = True
        finally:
            self.stop_requested = True
            self.capture.stop()
            if self.control is not None:
                self.control.close()
            complete = completed and self.capture.error is None
            for out in (self.video, self.predictions):
                if out is not None:
                    written = out.close(complete)
                    if written is not None and not complete:
                        self.partial_outputs.append(str(written))
            self.engines.close()
            if self._reloaded is not None:  # loaded by a reload the loop never applied
                self._reloaded[1].close()
            if not self.opts.headless:
                import cv2

                cv2.destroyAllWindows()
        return self.summary(time.perf_counter() - started)

    def request_stop(self):
        """Stop after the current frame, even while capture waits on a stalled source."""
        self.stop_requested = True
        self.capture.interrupt()

    def counters_text(self) -> str:
        c = self.capture.counts
        return (f", {c['dropped']} dropped, {c['corrupt']} corrupt, {c['reconnects']} reconnects, "
                f"{self.switch_count} switches")

    def summary(self, wall: float) -> dict:
        return {"deploy": str(self.opts.deploy), "backend": self.opts.backend,
                "source": self.source.describe(), "frames": self.times.frames,
                "source_frames_expected": self.capture.expected,
                "wall_s": round(wall, 3), "fps": round(self.times.frames / wall, 2) if wall else 0.0,
                **self.capture.counts, "switches": self.switch_count,
                "switch_log": list(self.switches),
                "switch_to_first_frame_ms": summarize([s["to_first_frame_ms"]
                                                       for s in self.switches]),
                "switch_dropped_frames": sum(s["dropped_meanwhile"] for s in self.switches),
                "domain_frames": self.domain_frames, "final_domain": self.domain,
                "auto": self.opts.domain == "auto", "reloads": list(self.reloads),
                "stages_ms": self.times.summary(), "error": self.capture.error,
                "partial_outputs": self.partial_outputs,
                "outputs": {"video": self.opts.output, "predictions": self.opts.predictions}}
