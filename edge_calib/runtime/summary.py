"""What ``run`` reports when it ends (``--json``'s last line; the exit status reads it), typed:
written in one place (``StreamRunner.summary``) and read back with ``RunSummary.from_dict``
by whatever parses the JSON (the benchmarks, the demo). Torch-free."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..core.errors import EdgeCalibError

CAPTURE_COUNTS = ("captured", "dropped", "corrupt", "missing", "reconnects")  # capture.py


@dataclass
class RunSummary:
    deploy: str
    backend: str
    source: str  # SourceSpec.describe()
    frames: int  # frames processed
    source_frames_expected: int | None  # a file's frame count (None: a live source)
    wall_s: float
    fps: float
    captured: int = 0
    dropped: int = 0  # dropped by a live source's queue (or --realtime)
    corrupt: int = 0
    missing: int = 0  # a file's frames that never arrived
    reconnects: int = 0
    switches: int = 0
    switch_log: list = field(default_factory=list)  # one entry per domain switch
    switch_to_first_frame_ms: dict = field(default_factory=dict)  # core.stats.summarize
    switch_dropped_frames: int = 0
    domain_frames: dict = field(default_factory=dict)  # frames per domain
    final_domain: str | None = None
    auto: bool = False  # --domain auto
    reloads: list = field(default_factory=list)  # bundle reloads (--watch, reload command)
    stages_ms: dict = field(default_factory=dict)  # timing.StageTimes.summary()
    error: str | None = None  # why the run did not finish cleanly (exit status 1)
    partial_outputs: list = field(default_factory=list)  # outputs of a failed run, kept aside
    collect: dict | None = None  # run --collect: the collector's summary
    outputs: dict = field(default_factory=dict)  # video, live_view, predictions

    def to_dict(self) -> dict:
        """The JSON object, keyed as ``run --json`` has always printed it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "run summary") -> "RunSummary":
        """A summary as printed (by this version; keys it does not know are refused in one
        line naming them, as is a missing one)."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise EdgeCalibError(f"{where}: unknown key {unknown[0]!r}")
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in data]
        if missing:
            raise EdgeCalibError(f"{where}: {missing[0]!r} missing")
        return cls(**data)
