#!/usr/bin/env python3
"""A long headless run of ``edge-calib run`` on a looping video with predictions on, its
resident memory sampled from /proc every few seconds: memory must stay flat after warm-up.

    python benchmarks/soak.py --deploy .edge-calib-demo/bundle-colour-thumbnail \
        --input .edge-calib-demo/stream-colour.avi --minutes 30

The stream is paced like a camera (``--realtime --fps 30``); the run ends with SIGTERM, which
also checks that it stops cleanly with its outputs flushed. Results: JSON, Markdown and a plot
in ``benchmarks/results/soak/``.

``--hostile`` attaches, for the whole run, the live view (``--output http://127.0.0.1:PORT``)
and the control socket, and clients that try to starve them (issue 35): ``--idle`` TCP
connections held open on the HTTP port (reopened as the server closes them), ``--slow``
clients sending a request one byte a second, 4 MJPEG viewers that read 1 KB a second, 4
control clients sending 64 KB lines without a newline, and a ``reload`` on the control
socket every ``--reload-every`` seconds (reload churn). Results under
``benchmarks/results/soak_hostile/``.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "soak"


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Hostile:
    """Clients that try to starve the runtime's live view and control socket, each in a
    daemon thread, counting what they managed; ``stop`` ends them."""

    def __init__(self, port: int, control: Path, idle: int, slow: int, reload_every: float):
        self.port, self.control, self.stopping = port, control, threading.Event()
        self.counts = {"idle_connects": 0, "slow_connects": 0, "viewer_bytes": 0,
                       "control_junk_lines": 0, "reloads_sent": 0, "reload_replies_ok": 0}
        self.lock = threading.Lock()
        jobs = [self.idle] * idle + [self.slow] * slow + [self.viewer] * 4 + [self.junk] * 4
        jobs.append(lambda: self.reloads(reload_every))
        self.threads = [threading.Thread(target=job, daemon=True) for job in jobs]
        for t in self.threads:
            t.start()

    def count(self, key, n=1):
        with self.lock:
            self.counts[key] += n

    def _connect_http(self):
        return socket.create_connection(("127.0.0.1", self.port), timeout=5)

    def idle(self):
        """Open a connection and send nothing; reopen when the server closes it."""
        while not self.stopping.is_set():
            try:
                with self._connect_http() as s:
                    self.count("idle_connects")
                    s.settimeout(1)
                    while not self.stopping.is_set():
                        try:
                            if s.recv(1) == b"":
                                break
                        except socket.timeout:
                            continue
            except OSError:
                pass
            self.stopping.wait(0.5)  # then open another

    def slow(self):
        """A request line one byte a second."""
        request = b"GET /status.json HTTP/1.1\r\nHost: x\r\n\r\n"
        while not self.stopping.is_set():
            try:
                with self._connect_http() as s:
                    self.count("slow_connects")
                    for byte in request:
                        if self.stopping.wait(1.0):
                            return
                        s.sendall(bytes([byte]))
            except OSError:
                self.stopping.wait(0.5)

    def viewer(self):
        """The MJPEG stream read 1 KB a second."""
        while not self.stopping.is_set():
            try:
                with self._connect_http() as s:
                    s.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
                    while not self.stopping.wait(1.0):
                        data = s.recv(1024)
                        if not data:
                            break
                        self.count("viewer_bytes", len(data))
            except OSError:
                self.stopping.wait(0.5)

    def _connect_control(self):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(5)
        s.connect(str(self.control))
        return s

    def junk(self):
        """64 KB lines with no newline on the control socket."""
        while not self.stopping.is_set():
            try:
                with self._connect_control() as s:
                    while not self.stopping.wait(0.5):
                        s.sendall(b"x" * 65536)
                        self.count("control_junk_lines")
            except OSError:
                self.stopping.wait(0.5)

    def reloads(self, every: float):
        """``reload`` on the control socket: the bundle is read, checked and swapped each time."""
        while not self.stopping.wait(every):
            try:
                with self._connect_control() as s:
                    s.sendall(b"reload\n")
                    self.count("reloads_sent")
                    reply = s.recv(4096)
                    if b'"ok": true' in reply:
                        self.count("reload_replies_ok")
            except OSError:
                pass

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=10)


def soak(deploy: str, video: str, seconds: float, every: float, fps: float, warmup: float,
         hostile: dict | None = None) -> dict:
    out = Path(tempfile.mkdtemp(prefix="soak-"))
    predictions = out / "predictions.jsonl"
    command = [str(Path(sys.executable).with_name("edge-calib")), "run", "--deploy", deploy, "--input", video, "--loop", "--realtime",
               "--fps", str(fps), "--domain", "auto", "--headless", "--threads", "1",
               "--predictions", str(predictions), "--json"]
    if hostile is not None:
        port, control = free_port(), out / "ec.sock"
        command += ["--output", f"http://127.0.0.1:{port}", "--control", str(control)]
    print(" ".join(command), file=sys.stderr)
    log = (out / "stderr.log").open("w")  # a file: a pipe nobody reads would fill and block
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    started, samples, frames_at = time.time(), [], []
    clients = None
    if hostile is not None:
        while not control.exists() and proc.poll() is None and time.time() - started < 120:
            time.sleep(0.2)
        clients = Hostile(port, control, **hostile)
    while time.time() - started < seconds and proc.poll() is None:
        time.sleep(every)
        mb = rss_mb(proc.pid)
        if mb is not None:
            samples.append((round(time.time() - started, 1), round(mb, 2)))
            frames_at.append((round(time.time() - started, 1), count_lines(predictions)))
    if clients is not None:
        clients.stop()
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=60)
    log.close()
    stderr = (out / "stderr.log").read_text()
    frames = sum(1 for _ in predictions.open()) if predictions.exists() else 0
    after = [mb for t, mb in samples if t >= warmup]
    summary = json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else {}
    rates = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(frames_at, frames_at[1:])
             if a[0] >= warmup and b[0] > a[0]]
    return {"command": " ".join(["edge-calib", *command[1:]]), "seconds": round(time.time() - started, 1),
            "hostile": hostile, "clients": clients.counts if clients else None,
            "fps_between_samples": {"min": round(min(rates), 2) if rates else None,
                                    "median": round(sorted(rates)[len(rates) // 2], 2)
                                    if rates else None},
            "exit": proc.returncode, "frames_in_predictions": frames,
            "traceback": "Traceback" in stderr, "samples": samples, "warmup_s": warmup,
            "rss_after_warmup_mb": {"first": after[0] if after else None,
                                    "last": after[-1] if after else None,
                                    "min": min(after, default=None),
                                    "max": max(after, default=None)},
            "summary": {k: summary.get(k) for k in ("frames", "fps", "captured", "dropped", "corrupt",
                                                    "switches", "wall_s")}}


def count_lines(path: Path) -> int:
    """Lines written so far to the predictions log (its temporary file while the run goes on)."""
    candidates = [path, *path.parent.glob(f".{path.name}.*.partial.jsonl")]
    for p in candidates:
        try:
            with p.open("rb") as f:
                return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
        except OSError:
            continue
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deploy", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--every", type=float, default=10, help="Seconds between RSS samples.")
    parser.add_argument("--fps", type=float, default=30)
    parser.add_argument("--warmup", type=float, default=60)
    parser.add_argument("--hostile", action="store_true",
                        help="Attach the live view, the control socket and hostile clients.")
    parser.add_argument("--idle", type=int, default=1000, help="Idle HTTP connections.")
    parser.add_argument("--slow", type=int, default=60, help="Slow HTTP clients.")
    parser.add_argument("--reload-every", type=float, default=10.0)
    args = parser.parse_args()
    hostile = ({"idle": args.idle, "slow": args.slow, "reload_every": args.reload_every}
               if args.hostile else None)
    global RESULTS
    if args.hostile:
        RESULTS = RESULTS.with_name("soak_hostile")
    result = soak(args.deploy, args.input, 60 * args.minutes, args.every, args.fps, args.warmup,
                  hostile)
    sys.path.insert(0, str(ROOT))
    from edge_calib.core.provenance import capture, git_commit

    sha, dirty = git_commit(ROOT)
    result |= {"commit": sha, "uncommitted_changes": dirty, "machine": capture()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    r = result["rss_after_warmup_mb"]
    md = (f"# Soak: `edge-calib run` for {result['seconds'] / 60:.1f} min\n\n"
          f"`{result['command']}`\n\n"
          f"- frames written to --predictions: {result['frames_in_predictions']}\n"
          f"- exit after SIGTERM: {result['exit']}, traceback: {result['traceback']}\n"
          f"- RSS after {args.warmup:.0f} s warm-up: first {r['first']} MB, last {r['last']} MB, "
          f"min {r['min']} MB, max {r['max']} MB (spread {r['max'] - r['min']:.2f} MB)\n"
          f"- machine: {result['machine'].get('cpu')}; commit {sha}\n"
          f"- frames a second into the log between samples after warm-up: "
          f"{result['fps_between_samples']}; the run's summary: {result['summary']}\n")
    if result["clients"]:
        md += (f"- hostile clients ({result['hostile']}): {result['clients']}\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3))
        ax.plot([t / 60 for t, _ in result["samples"]], [m for _, m in result["samples"]])
        ax.set_xlabel("minutes")
        ax.set_ylabel("RSS (MB)")
        ax.set_ylim(0, 1.15 * max(m for _, m in result["samples"]))
        fig.tight_layout()
        fig.savefig(RESULTS / "rss.png", dpi=110)
        md += "\n![RSS over time](rss.png)\n"
    except ImportError:
        pass
    (RESULTS / "soak.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
