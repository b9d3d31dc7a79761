"""What decides how the next frame runs: the current domain (``--domain``, keys, the control
channel, ``--domain auto``) and the bundle's engines, which a ``reload`` (or ``--watch``)
replaces in the background only after the new bundle passes its manifest check and a check on
the last frame. The frame loop (``stream.py``) asks it once per frame (``next_frame``) and
gets a ``FramePlan`` back."""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from ..core.errors import EdgeCalibError
from ..core.memory import return_freed_memory
from ..deploy.bundle import MANIFEST, MANIFEST_HASH, open_bundle
from ..engines import Engines, check_engines, open_engines
from ..imaging.domain_features import frame_features
from ..imaging.photometric import HistogramMatch
from .domain_auto import UNKNOWN, AutoDomain, load_domain_model

SWITCH_LOG = 1000  # the last switches and reloads kept for the summary (all are counted)


@dataclass(frozen=True)
class FinishedFrame:
    """The loop's word on the frame before: the ``number``-th frame planned, computed in
    ``domain``, done at ``at`` (perf_counter) with ``dropped`` frames dropped by capture so far
    (a switch's log entry)."""

    number: int
    domain: str
    at: float
    dropped: int


@dataclass(frozen=True)
class FramePlan:
    """How one frame runs, decided by the controller in one call: the uint8 frame to run
    (after ``--unknown histogram``), the domain it is computed in, the bundle domain whose
    calibrator runs (None: the frozen model alone), the engines in use, ``--domain auto``'s
    vote, and the times the vote and the fallback took (ms)."""

    number: int  # frames planned before this one (FinishedFrame.number)
    frame: np.ndarray
    domain: str
    calibrator: str | None
    engines: Engines
    fallback: bool
    vote: dict | None
    vote_ms: float
    fallback_ms: float
    auto: bool
    last_switch: dict | None
    collecting: dict | None


def unknown_fallback(bundle, rule: str) -> HistogramMatch | None:
    """``--unknown histogram``: per-frame histogram matching of unknown frames to the source
    pixels the bundle records (``source_pixels``), in front of the frozen model; ``model``:
    the frozen model alone (None)."""
    if rule == "model":
        return None
    entry = bundle.manifest.source_pixels
    if entry is None:
        raise EdgeCalibError(f"--unknown histogram: {bundle.root} records no source pixels "
                             "(exported before this release, or from a model without source "
                             "statistics); export it again, or use --unknown model")
    path = bundle.path(entry["file"])
    try:
        histograms = np.asarray(json.loads(path.read_text())["histograms"], float)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EdgeCalibError(f"{path}: unreadable source pixels ({type(exc).__name__}: {exc})") \
            from None
    channels = bundle.spec.channels
    if histograms.shape != (channels, 256) or not np.all(np.isfinite(histograms)) \
            or np.any(histograms < 0) or np.any(histograms.sum(axis=1) <= 0):
        raise EdgeCalibError(f"{path}: source pixels must be {channels} non-negative histograms "
                             f"of 256 levels, got shape {histograms.shape}; export it again")
    return HistogramMatch.from_histograms(histograms, f"{bundle.root.name}/{entry['file']}")


class Controller:
    def __init__(self, opts, log, dropped, request_stop):
        """``dropped()`` counts the frames capture dropped so far (for the switch log);
        ``request_stop()`` ends the run (the ``quit`` command, the q key)."""
        self.opts, self.log, self._dropped, self._request_stop = opts, log, dropped, request_stop
        self.bundle = open_bundle(opts.deploy)  # refuses a bundle that fails its check
        warning = self.bundle.manifest.classifier.metrics.get("conversion_warning")
        if warning:  # import-model --force: say so where the model runs, not only in doctor
            log(f"warning: the bundle's classifier was {warning}")
        self.auto = None
        self.domain = None  # with --domain auto: set by the first frames' vote
        if opts.domain == "auto":
            self.auto = self._auto_for(self.bundle)
        else:
            self.bundle.domain(opts.domain)  # unknown: lists the bundle's domains
            self.domain = opts.domain
        self.fallback = unknown_fallback(self.bundle, opts.unknown)
        self.collector = None  # run --collect: set by the runner (collect.FrameCollector)
        # frames voted unknown before the window switched (index, (rgb, features, captured)),
        # kept for the collection that the switch starts
        self.voted_unknown: collections.deque = collections.deque(maxlen=opts.auto_window)
        self.engines = self._load_checked(self.bundle, None)  # last: nothing after it can fail
        self.switches: collections.deque[dict] = collections.deque(maxlen=SWITCH_LOG)
        self.switch_count = 0
        # switches whose first frame has not been reported done, each with the number of
        # frames planned before it (a frame planned earlier ran the old domain)
        self._pending_switches: list[dict] = []
        self._planned = 0
        self.reloads: collections.deque[dict] = collections.deque(maxlen=SWITCH_LOG)
        self._reloaded = None
        self._reload_thread = None
        self._stopping = False
        self.last_frame: np.ndarray | None = None  # uint8, for a reload's check

    # -- engines and reload ----------------------------------------------------------------
    def _auto_for(self, bundle) -> AutoDomain:
        """The vote on ``bundle``'s domain classifier, with the run's window settings."""
        entry = bundle.manifest.domain_classifier
        if entry is None:
            raise EdgeCalibError("--domain auto: this bundle has no domain classifier "
                                 "(export it with --auto-domain)")
        return AutoDomain(load_domain_model(bundle.path(entry.file), bundle.domains),
                          self.opts.auto_window, self.opts.auto_threshold,
                          self.opts.auto_radius_scale)

    def _load_checked(self, bundle, x):
        """Load every domain's engines and check each on one frame (finite outputs, bounded
        calibrator, frame graph equal to its float graph); this also warms every session up.
        Then the float sessions the frame graphs replace are freed."""
        engines = open_engines(bundle, self.opts.backend, self.opts.threads,
                               fused=not self.opts.separate, check=False, frames=True)
        try:
            check_engines(engines, bundle, x)
        except BaseException:
            engines.close()
            raise
        engines.release_float_sessions()  # the frame graphs passed: the float twins go
        return engines

    def request_reload(self, reason: str) -> dict:
        if self._reload_thread is not None and self._reload_thread.is_alive():
            return {"ok": False, "error": "a reload is already running"}

        def work():
            started = time.perf_counter()
            try:
                bundle = open_bundle(self.opts.deploy)
                if bundle.spec != self.bundle.spec:
                    raise EdgeCalibError("the new bundle has another input spec")
                frame = self.last_frame
                fallback = unknown_fallback(bundle, self.opts.unknown)
                auto = None if self.auto is None else self._auto_for(bundle)
                engines = self._load_checked(bundle, None if frame is None
                                             else bundle.spec.normalize(frame))
                self._reloaded = (bundle, engines, fallback, auto, reason,
                                  time.perf_counter() - started)
            except Exception as exc:  # keep the old engines, log why
                self.reloads.append({"ok": False, "reason": reason, "error": str(exc)})
                self.log(f"reload ({reason}) refused, the previous bundle keeps running: {exc}")

        self._reload_thread = threading.Thread(target=work, name="reload", daemon=True)
        self._reload_thread.start()
        return {"ok": True, "reloading": True}

    def apply_reload(self, index: int) -> None:
        """Swap in a bundle a reload has loaded and checked (between two frames)."""
        if self._reloaded is None:
            return
        bundle, engines, fallback, auto, reason, seconds = self._reloaded
        self._reloaded = None
        replaced, self.bundle, self.engines, self.fallback = self.engines, bundle, engines, fallback
        if self.auto is not None and auto is not None:  # the new domain model votes from now
            auto.carry_votes(self.auto)  # on, the window's votes kept (by domain name)
            self.auto = auto
        replaced.close()  # the old sessions are never used again
        return_freed_memory()  # or each reload's sessions stay in the allocator's free lists
        if self.domain not in bundle.domains and self.domain != UNKNOWN:
            self.domain = bundle.domains[0]
        self.reloads.append({"ok": True, "reason": reason, "frame": index,
                             "load_s": round(seconds, 3)})
        self.log(f"reloaded the bundle ({reason}) at frame {index}")

    def watch(self) -> None:
        """Start a thread that asks for a reload when the bundle's files change on disk."""
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

        def loop():
            last = snapshot()
            while not self._stopping:
                time.sleep(0.5)
                now = snapshot()
                if now != last:
                    last = now
                    time.sleep(0.2)  # let a writer finish
                    self.request_reload("bundle changed on disk")

        threading.Thread(target=loop, name="watch", daemon=True).start()

    def close(self, finished: FinishedFrame | None = None) -> None:
        """Close the engines in use and any that a reload loaded but the loop never applied;
        ``finished``: the run's last frame (it may complete a switch)."""
        if finished is not None:
            self._finished(finished)
        self._stopping = True
        self.engines.close()
        if self._reloaded is not None:
            self._reloaded[1].close()

    def describe_bundle(self) -> dict:
        """The bundle running now (not whatever is on disk meanwhile), as a collection's
        record names it."""
        return {"path": str(self.opts.deploy), "manifest_sha256": self.bundle.digest,
                "domains": self.bundle.domains,
                "created": self.bundle.manifest.provenance.get("created")}

    # -- the domain ---------------------------------------------------------------------------
    def switch(self, name: str, by: str, index: int, requested: float | None = None) -> dict:
        """Run ``name``'s calibrator from the next frame. ``requested`` (perf_counter) is when
        the request arrived; the switch log says how long until the first frame computed with
        the new calibrator was done, and how many frames capture dropped meanwhile."""
        if name not in self.bundle.domains and not (by == "auto" and name == UNKNOWN):
            return {"ok": False, "error": f"unknown domain {name!r}; this bundle has: "
                                          f"{', '.join(self.bundle.domains)}"}
        previous, self.domain = self.domain, name
        if self.collector is not None and by == "auto" and previous != name:
            if name == UNKNOWN and self.collector.current is None:
                self.collector.start(time.strftime("unknown-%Y%m%d-%H%M%S"), "unknown")
                for voted, frame in self.voted_unknown:  # the votes that made the switch
                    if voted > index - self.opts.auto_window:
                        self.collector.offer(*frame)
                self.voted_unknown.clear()
            elif previous == UNKNOWN and self.collector.current is not None \
                    and self.collector.current["reason"] == "unknown":
                self.collector.stop(f"the vote named {name!r}")
        if previous is not None and previous != name:
            self.switch_count += 1
            # a switch no frame was planned in since is superseded by this one
            self._pending_switches = [e for e in self._pending_switches
                                      if e["planned_before"] < self._planned]
            self._pending_switches.append({
                "frame": index, "from": previous, "to": name, "by": by,
                "requested": requested or time.perf_counter(), "dropped_before": self._dropped(),
                "planned_before": self._planned})
            if self.opts.verbose:
                self.log(f"domain {previous} -> {name} ({by}) at frame {index}")
        return {"ok": True, "domain": name}

    def next_frame(self, u8: np.ndarray, rgb: np.ndarray, captured: float, index: int,
                   commands: Iterable, loop_status: Callable[[], dict],
                   finished: FinishedFrame | None) -> FramePlan:
        """Everything decided between two frames, in order: the frame before is ``finished``
        (completing a switch's log entry), the control channel's ``commands`` are answered
        (``loop_status()`` gives the loop's figures), a loaded reload is applied, and
        ``--domain auto`` votes on ``u8`` (the resized frame; ``rgb`` and ``captured`` are kept
        for a collection). Returns how ``u8`` runs."""
        if finished is not None:
            self._finished(finished)
        for command in commands:
            self.handle(command, index, loop_status())
        self.apply_reload(index)
        self.last_frame = u8
        started = time.perf_counter()
        vote = self.vote(u8, index)  # --domain auto: features of a thumbnail of u8
        self._collect(vote, u8, rgb, captured, index)
        voted = time.perf_counter()
        domain = self.domain
        fallback = domain == UNKNOWN and self.fallback is not None
        if fallback:  # --unknown histogram
            u8 = self.fallback(u8)
        self._planned += 1
        return FramePlan(
            number=self._planned - 1, frame=u8, domain=domain,
            calibrator=None if domain == UNKNOWN else domain, engines=self.engines, fallback=fallback, vote=vote,
            vote_ms=(voted - started) * 1e3, fallback_ms=(time.perf_counter() - voted) * 1e3,
            auto=self.auto is not None, last_switch=self.last_switch(),
            collecting=None if self.collector is None else self.collector.collecting)

    def _collect(self, vote: dict | None, u8: np.ndarray, rgb: np.ndarray, captured: float,
                 index: int) -> None:
        """``run --collect``: a collection takes the frame (a stretch of unknown frames only
        the frames voted unknown themselves); a frame voted unknown before the window switched
        is kept for the collection the switch starts."""
        if self.collector is None:
            return
        current = self.collector.current
        unknown = vote is not None and vote["predicted"] == UNKNOWN
        if current is not None and (current["reason"] == "command" or vote is None or unknown):
            features = self.auto.last_features if vote is not None else frame_features(u8)[0]
            self.collector.offer(rgb, features, captured)
        elif current is None and unknown:
            self.voted_unknown.append((index, (rgb, self.auto.last_features, captured)))

    def _finished(self, frame: FinishedFrame) -> None:
        """A frame computed with ``frame.domain`` is done: complete the log entry of the switch
        it was the first frame of (one planned after the switch was asked for)."""
        for entry in self._pending_switches:
            if entry["to"] == frame.domain and frame.number >= entry["planned_before"]:
                self._pending_switches.remove(entry)
                del entry["planned_before"]
                entry["to_first_frame_ms"] = (frame.at - entry.pop("requested")) * 1e3
                entry["dropped_meanwhile"] = frame.dropped - entry.pop("dropped_before")
                self.switches.append(entry)
                return

    def last_switch(self) -> dict | None:
        return self.switches[-1] if self.switches else None

    def vote(self, frame: np.ndarray, index: int) -> dict | None:
        """With ``--domain auto``: this uint8 frame's vote (``AutoDomain.predict``), switching
        when the window of votes says so; None otherwise."""
        if self.auto is None:
            return None
        vote = self.auto.predict(frame)
        target = self.auto.update(self.domain, vote["predicted"])
        if target is not None:
            self.switch(target, "auto", index)
        return vote

    # -- commands and keys -----------------------------------------------------------------
    def handle(self, command, index: int, status: dict) -> None:
        """Answer one control-channel command (``status`` holds the loop's own figures)."""
        words = command.text.split()
        if not words:
            reply = {"ok": False, "error": "empty command"}
        elif words[0] == "domain" and len(words) == 2:
            self.auto = None  # a manual choice turns automatic switching off
            reply = self.switch(words[1], "control", index, command.received)
        elif words[0] == "status":
            reply = {"ok": True, "domain": self.domain, "domains": self.bundle.domains,
                     **status, "auto": self.auto is not None,
                     "collect": None if self.collector is None else self.collector.status()}
        elif words[0] == "reload":
            reply = self.request_reload("reload command")
        elif words[0] == "collect" and len(words) == 2:
            if self.collector is None:
                reply = {"ok": False, "error": "this run collects nothing; start it with "
                                               "--collect DIR"}
            elif words[1] == "stop":
                reply = self.collector.stop("collect stop")
            else:
                reply = self.collector.start(words[1], "command")
        elif words[0] == "quit":
            self._request_stop()
            reply = {"ok": True, "stopping": True}
        else:
            reply = {"ok": False, "error": f"unknown command {command.text!r}; use domain NAME, "
                                           "status, reload, collect NAME, collect stop or quit"}
        command.reply.put(reply)

    def key(self, key: int, index: int) -> None:
        """The display window's keys: q/Esc quit, 1-9 a domain, n/p the next/previous one."""
        domains = self.bundle.domains
        if key in (ord("q"), 27):
            self._request_stop()
        elif ord("1") <= key <= ord("9") and key - ord("1") < len(domains):
            self.auto = None
            self.switch(domains[key - ord("1")], "key", index)
        elif key in (ord("n"), ord("p")):
            self.auto = None
            step = 1 if key == ord("n") else -1
            at = domains.index(self.domain) if self.domain in domains else -step
            self.switch(domains[(at + step) % len(domains)], "key", index)
