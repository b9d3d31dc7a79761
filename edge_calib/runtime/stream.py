"""``edge-calib run``: the frame loop. capture -> pre-process -> calibrator -> classifier ->
post-process -> sinks.

The loop asks the ``Controller`` (controller.py) which domain's calibrator and which engines
run each frame (it answers commands, keys, ``--domain auto`` and reloads) and hands every
processed frame to its sinks (sinks.py: the display, video files, the predictions log, the live
view), drawing the overlay only when one of them shows it.
"""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass

from ..core.stats import summarize
from .capture import CaptureThread
from .controller import Controller, FinishedFrame
from .live_view import LiveView
from .outputs import annotate
from .postprocess import output_for, predictions_from_logits
from .sinks import Delivered, is_live_url, open_sinks
from .sources import SourceSpec
from .summary import RunSummary
from .timing import StageTimes


@dataclass
class RunOptions:
    deploy: str
    domain: str
    backend: str = "onnxruntime"
    headless: bool = False
    outputs: tuple[str, ...] = ()  # video files and live-view URLs (http://HOST:PORT)
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
    auto_radius_scale: float = 1.0
    unknown: str = "model"  # what runs for unknown frames: the frozen model alone, or histogram
    collect: str | None = None  # a folder for frames of unknown domains (collect.py)
    collect_max: int = 2000  # frames per collection
    collect_budget_mb: float = 1024.0  # all of a run's collections
    collect_rate: float = 2.0  # frames a second at most (0: no limit)


def log(message: str) -> None:
    print(f"[edge-calib] {message}", file=sys.stderr, flush=True)


class StreamRunner:
    def __init__(self, options: RunOptions, source: SourceSpec):
        self.opts = options
        self.stop_requested = False
        self.capture = self.control = None
        self.sinks: list = []
        self.controller = Controller(options, log, dropped=lambda: self.capture.counts["dropped"],
                                     request_stop=self.request_stop)
        try:
            self.source = source
            self.capture = CaptureThread(source, options.queue_size, options.reconnect_timeout,
                                         realtime=options.realtime, log=log)
            self.sinks = open_sinks(options.outputs, options.predictions, options.headless,
                                    source.fps or 30.0, self.controller.key, log)
            if options.control:
                from .control import ControlChannel

                self.control = ControlChannel(options.control)
            if options.collect:
                from .collect import FrameCollector

                self.controller.collector = FrameCollector(
                    options.collect, options.collect_max,
                    int(options.collect_budget_mb * 2**20), options.collect_rate,
                    self.controller.describe_bundle, log)
        except BaseException:
            for sink in self.sinks:
                sink.close(False)
            if self.control is not None:
                self.control.close()
            self.controller.close()
            raise
        self.task = self.controller.bundle.task
        self.output = output_for(self.task, self.controller.bundle.labels)
        self.annotating = any(s.needs_annotated for s in self.sinks)
        self.times = StageTimes()
        self.domain_frames: dict[str, int] = {}
        self.partial_outputs: list[str] = []  # outputs of a failed run, kept beside the old ones
        self.output_error: str | None = None  # an output that did not read back whole
        self.collected: dict | None = None  # run --collect: the collector's summary

    @property
    def spec(self):
        return self.controller.bundle.spec

    def status(self) -> dict:
        """The loop's own figures, for the status command and the live view."""
        return {"frames": self.times.frames, "fps": round(self.times.fps(), 2),
                **self.capture.counts}

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> RunSummary:
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, lambda *_: self.request_stop())
            except ValueError:  # not in the main thread (tests): rely on quit / max_frames
                pass
        if self.opts.watch:
            self.controller.watch()
        self.capture.start()
        started = time.perf_counter()
        last_report = started
        self.times = StageTimes()
        index = 0
        completed = False
        finished = None  # the frame before, for the controller's switch log
        try:
            while not self.stop_requested:
                if self.opts.max_frames is not None and index >= self.opts.max_frames:
                    break
                frame = self.capture.get()
                if frame is None:
                    break
                finished = self._process(frame, index, started, finished)
                index += 1
                if self.opts.verbose and time.perf_counter() - last_report >= self.opts.report_every:
                    last_report = time.perf_counter()
                    log("\n" + self.times.report(self.counters_text()))
            completed = True
        finally:
            self._close(completed, finished)
            for sig, handler in previous.items():  # a later signal is not this run's
                signal.signal(sig, handler)
        return self.summary(time.perf_counter() - started)

    def _process(self, frame, index: int, started: float,
                 finished: FinishedFrame | None) -> FinishedFrame:
        """One frame: the controller's plan (domain, engines, vote), inference, the record and
        the overlay, every sink; returns what the controller's switch log needs of it."""
        t0 = time.perf_counter()
        u8 = self.spec.resize_uint8(frame.rgb[None])
        t1 = time.perf_counter()
        commands = [] if self.control is None else self.control.pending()
        plan = self.controller.next_frame(u8, frame.rgb, frame.captured, index, commands,
                                          self.status, finished)
        domain, engines = plan.domain, plan.engines
        pre_ms = (t1 - t0) * 1e3 + plan.fallback_ms
        t_auto = time.perf_counter()
        if engines.takes_frames(plan.calibrator):
            predictions, stage = engines.infer_frame(plan.calibrator, plan.frame)
            t2 = time.perf_counter()
        else:  # a calibrator and a classifier in turn: normalise and ArgMax here
            x = self.spec.normalize(plan.frame)
            pre_ms += (time.perf_counter() - t_auto) * 1e3
            logits, stage = engines.infer(plan.calibrator, x)
            t2 = time.perf_counter()
            predictions = predictions_from_logits(self.task, logits)
        result = self.output.summarise(predictions)
        times = {"capture": frame.read_ms, "pre": pre_ms, **stage}
        if plan.vote is not None:
            times["auto"] = plan.vote_ms
        record = {"index": frame.index, "time": round(frame.captured - started, 6),
                  "domain": domain, **result}
        if plan.fallback:
            record["fallback"] = "histogram"
        if plan.vote is not None:
            record["auto"] = {k: round(v, 4) if isinstance(v, float) else v
                              for k, v in plan.vote.items()}
        annotated = None
        if self.annotating:
            network = " ".join(f"{k[:3]} {v:.2f}" for k, v in stage.items())
            annotated = annotate(self.output.draw(frame.rgb, result), [
                f"{self.output.headline(result)}  domain {domain}"
                + (" [auto]" if plan.auto else ""),
                f"{self.times.fps():.1f} FPS  pre {times['pre']:.2f}  {network} ms"])
        delivered = Delivered(index, domain, record, annotated, {
            "fps": self.times.fps(), "frames": self.times.frames,
            "auto": plan.auto, "last_switch": plan.last_switch,
            "collecting": plan.collecting})
        for sink in self.sinks:
            if sink.needs_annotated:
                sink.write(delivered)
        t3 = time.perf_counter()
        done = FinishedFrame(plan.number, domain, t3, self.capture.counts["dropped"])
        times["post"] = (t3 - t2) * 1e3
        times["total"] = (t3 - t0) * 1e3 + frame.read_ms  # the stages above, summed
        self.times.add(times)
        self.domain_frames[domain] = self.domain_frames.get(domain, 0) + 1
        record["latency_ms"] = {k: round(v, 4) for k, v in times.items()}
        for sink in self.sinks:
            if not sink.needs_annotated:
                sink.write(delivered)
        return done

    def _close(self, completed: bool, finished: FinishedFrame | None) -> None:
        """Stop capture and the control channel, close the collection and every sink (keeping
        what a failed run wrote as partial outputs), and the controller."""
        self.stop_requested = True
        self.capture.stop()
        if self.control is not None:
            self.control.close()
        ctl = self.controller
        if ctl.collector is not None:
            self.collected = ctl.collector.close()
        complete = completed and self.capture.error is None
        for sink in self.sinks:
            written = sink.close(complete)
            failure = getattr(sink, "failure", None)
            if failure:
                self.output_error = self.output_error or failure
            if written is not None and (failure or not complete):
                self.partial_outputs.append(str(written))
        ctl.close(finished)

    def request_stop(self):
        """Stop after the current frame, even while capture waits on a stalled source."""
        self.stop_requested = True
        self.capture.interrupt()

    def counters_text(self) -> str:
        c = self.capture.counts
        return (f", {c['dropped']} dropped, {c['corrupt']} corrupt, {c['reconnects']} reconnects, "
                f"{self.controller.switch_count} switches")

    def summary(self, wall: float) -> RunSummary:
        ctl = self.controller
        return RunSummary(
            deploy=str(self.opts.deploy), backend=self.opts.backend,
            source=self.source.describe(), frames=self.times.frames,
            source_frames_expected=self.capture.expected, wall_s=round(wall, 3),
            fps=round(self.times.frames / wall, 2) if wall else 0.0, **self.capture.counts,
            switches=ctl.switch_count, switch_log=list(ctl.switches),
            switch_to_first_frame_ms=summarize([s["to_first_frame_ms"] for s in ctl.switches]),
            switch_dropped_frames=sum(s["dropped_meanwhile"] for s in ctl.switches),
            domain_frames=self.domain_frames, final_domain=ctl.domain,
            auto=self.opts.domain == "auto", reloads=list(ctl.reloads),
            stages_ms=self.times.summary(),
            error=(self.capture.error or (self.collected or {}).get("error")
                   or self.output_error),
            partial_outputs=self.partial_outputs, collect=self.collected,
            outputs={"video": [o for o in self.opts.outputs if not is_live_url(o)],
                     "live_view": [s.url for s in self.sinks if isinstance(s, LiveView)],
                     "predictions": self.opts.predictions})
