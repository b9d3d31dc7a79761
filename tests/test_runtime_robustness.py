"""The runtime over long and hostile runs: bounded memory, sockets and outputs that never
destroy what is not theirs, prompt shutdown on a stalled stream (real files, real sockets,
a real HTTP server on 127.0.0.1)."""

import http.server
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edge_calib.cli import main
from edge_calib.runtime.sources import parse_source
from edge_calib.runtime.controller import SWITCH_LOG
from edge_calib.runtime.stream import RunOptions, StreamRunner
from edge_calib.runtime.timing import WINDOW


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def frame_folder(shared_data, tmp_path_factory):
    """Twelve real USPS test images as PNG files."""
    from edge_calib.data import load_dataset

    folder = tmp_path_factory.mktemp("frames")
    usps = load_dataset("usps", "test", shared_data)
    for i in range(12):
        cv2.imwrite(str(folder / f"{i:03d}.png"), usps.images[i])
    return folder


@pytest.mark.slow
def test_long_stream_keeps_timing_memory_bounded(bundle_dir, frame_folder):
    """A looping source for more frames than the timing window: the stored samples stop
    growing at the window, the counts still cover every frame, and switches are capped."""
    frames = WINDOW + 200
    opts = RunOptions(deploy=str(bundle_dir), domain="mnist", headless=True, max_frames=frames)
    runner = StreamRunner(opts, parse_source(None, str(frame_folder), loop=True))
    original = runner.capture.get

    def switching_get():  # flip the domain before every frame: the most switches possible
        runner.controller.switch("usps" if runner.controller.domain == "mnist" else "mnist", "test", runner.times.frames)
        return original()

    runner.capture.get = switching_get
    summary = runner.run().to_dict()
    assert summary["frames"] == frames
    for stage in ("capture", "pre", "network", "post", "total"):
        assert len(runner.times.recent[stage]) == WINDOW, stage
    assert summary["stages_ms"]["total"]["count"] == frames
    assert summary["stages_ms"]["total"]["percentiles_over_last"] == WINDOW
    assert summary["switches"] == frames and len(summary["switch_log"]) == SWITCH_LOG


@pytest.mark.parametrize("what", ["file", "folder"])
def test_control_path_never_deletes_what_is_not_a_socket(bundle_dir, frame_folder, tmp_path, what):
    path = tmp_path / "ec.sock"
    if what == "file":
        path.write_text("precious")
    else:
        path.mkdir()
    r = invoke("run", "--deploy", bundle_dir, "--input", frame_folder, "--domain", "usps",
               "--headless", "--control", path)
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1
    assert f"a {what} is there, not a socket" in r.output
    assert path.read_text() == "precious" if what == "file" else path.is_dir()


def test_control_socket_in_a_missing_folder_and_a_live_one(bundle_dir, frame_folder, tmp_path):
    r = invoke("run", "--deploy", bundle_dir, "--input", frame_folder, "--domain", "usps",
               "--headless", "--control", tmp_path / "nope" / "ec.sock")
    assert r.exit_code == 2 and "does not exist" in r.output and "Traceback" not in r.output
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(tmp_path / "live.sock"))
    live.listen(1)
    try:
        r = invoke("run", "--deploy", bundle_dir, "--input", frame_folder, "--domain", "usps",
                   "--headless", "--control", tmp_path / "live.sock")
        assert r.exit_code == 2 and "another edge-calib run is listening there" in r.output
    finally:
        live.close()
    # the socket of a killed run (nobody listens) is replaced, and removed at the end
    r = invoke("run", "--deploy", bundle_dir, "--input", frame_folder, "--domain", "usps",
               "--headless", "--control", tmp_path / "live.sock")
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "live.sock").exists()


def test_a_run_without_frames_keeps_the_previous_outputs(bundle_dir, frame_folder, tmp_path):
    preds, video = tmp_path / "p.jsonl", tmp_path / "out.avi"
    r = invoke("run", "--deploy", bundle_dir, "--input", frame_folder, "--domain", "usps",
               "--headless", "--predictions", preds, "--output", video)
    assert r.exit_code == 0
    good_preds, good_video = preds.read_bytes(), video.read_bytes()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "0.png").write_bytes(b"not an image")
    r = invoke("run", "--deploy", bundle_dir, "--input", broken, "--domain", "usps",
               "--headless", "--predictions", preds, "--output", video)
    assert r.exit_code != 0 and "delivered no frames" in r.output
    assert preds.read_bytes() == good_preds and video.read_bytes() == good_video
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "out.avi", "p.jsonl"]


def test_two_runs_writing_the_same_predictions(bundle_dir, frame_folder, tmp_path):
    preds = tmp_path / "p.jsonl"
    procs = [subprocess.Popen([sys.executable, "-m", "edge_calib.cli", "run", "--deploy",
                               str(bundle_dir), "--input", str(frame_folder), "--loop",
                               "--max-frames", "300", "--domain", domain, "--headless",
                               "--predictions", str(preds)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for domain in ("usps", "mnist")]
    errors = [proc.communicate(timeout=120)[1] for proc in procs]
    ended = [(proc.returncode, err) for proc, err in zip(procs, errors)]
    # while one writes, the other is refused (when they overlap, as they nearly always do)
    assert any(code == 0 for code, _ in ended), ended
    for code, err in ended:
        assert code == 0 or (code == 2 and err.strip().splitlines() == [
            f"error: --predictions {preds}: another edge-calib process is writing it; wait for "
            "it to finish or choose another name"]), err
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(rows) == 300 and len({r["domain"] for r in rows}) == 1  # one run's, whole


@pytest.mark.parametrize("option", ["--predictions", "--output"])
def test_output_under_a_file_or_on_a_folder(bundle_dir, frame_folder, tmp_path, option):
    (tmp_path / "afile").write_text("x")
    name = "p.jsonl" if option == "--predictions" else "o.avi"
    r = invoke("run", "--deploy", bundle_dir, "--input", frame_folder, "--domain", "usps",
               "--headless", option, tmp_path / "afile" / name)
    assert r.exit_code == 2 and "a file is in the way" in r.output
    r = invoke("run", "--deploy", bundle_dir, "--input", frame_folder, "--domain", "usps",
               "--headless", option, tmp_path)
    assert r.exit_code == 2 and "is a folder" in r.output
    assert (tmp_path / "afile").read_text() == "x"


def test_leftovers_of_killed_runs_are_cleaned(bundle_dir, frame_folder, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".p.jsonl.{dead.pid}.abc.partial.jsonl"
    stale.write_text("half a line")
    r = invoke("run", "--deploy", bundle_dir, "--input", frame_folder, "--domain", "usps",
               "--headless", "--predictions", tmp_path / "p.jsonl")
    assert r.exit_code == 0 and not stale.exists()


class StallingServer:
    """MJPEG over HTTP that sends ``frames`` frames, then keeps the connection open and silent
    (a camera that hangs); later connections get the headers and silence."""

    def __init__(self, frames=40):
        jpg = cv2.imencode(".jpg", np.full((48, 48, 3), 90, np.uint8))[1].tobytes()
        self.release = threading.Event()
        served = {"connections": 0}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                served["connections"] += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                for _ in range(frames if served["connections"] == 1 else 0):
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                     + str(len(jpg)).encode() + b"\r\n\r\n" + jpg + b"\r\n")
                    time.sleep(0.02)
                outer.release.wait(60)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/stream.mjpg"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.slow
def test_sigterm_while_the_stream_stalls_stops_within_a_second(bundle_dir, tmp_path):
    server = StallingServer()
    preds = tmp_path / "p.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "edge_calib.cli", "run", "--deploy",
                             str(bundle_dir), "--input", server.url, "--domain", "usps",
                             "--headless", "--json", "--reconnect-timeout", "60",
                             "--predictions", str(preds)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(6)  # 40 frames, then the stream hangs with its connection open
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        stopped_in = time.monotonic() - sent
    finally:
        proc.kill()
        server.stop()
    assert stopped_in < 2.0, stopped_in
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["frames"] >= 30
    assert len(preds.read_text().splitlines()) == summary["frames"]  # flushed


def test_a_stall_is_noticed_within_the_reconnect_timeout(bundle_dir):
    server = StallingServer()
    opts = RunOptions(deploy=str(bundle_dir), domain="usps", headless=True, reconnect_timeout=2.0)
    runner = StreamRunner(opts, parse_source(None, server.url))
    started = time.monotonic()
    try:
        summary = runner.run().to_dict()
    finally:
        server.stop()
    assert summary["frames"] >= 30
    assert "did not come back within --reconnect-timeout 2s" in summary["error"]
    assert time.monotonic() - started < 20  # not OpenCV's 30 s per read


def test_the_control_socket_obeys_its_owner_only_and_bounds_lines(bundle_dir, frame_folder,
                                                                  tmp_path):
    """Started with a permissive umask, the socket is still owner-only; another local user
    (setpriv to nobody) cannot command the run; an over-long line gets an error line and the
    run goes on; a good command after it works."""
    import os
    import shutil
    import stat
    import tempfile
    from pathlib import Path

    # a folder every user may reach (pytest's own is its owner's only): only the socket's own
    # mode and the peer check stand between another user and the run
    shared = Path(tempfile.mkdtemp(prefix="edge-calib-control-", dir="/tmp"))
    os.chmod(shared, 0o755)
    sock = shared / "ec.sock"
    proc = subprocess.Popen([sys.executable, "-m", "edge_calib.cli", "run", "--deploy",
                             str(bundle_dir), "--input", str(frame_folder), "--domain", "usps",
                             "--headless", "--loop", "--realtime", "--fps", "50", "--control",
                             str(sock)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: os.umask(0))
    try:
        deadline = time.time() + 60
        while not sock.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert sock.exists(), proc.stderr.read().decode()[-2000:]
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        if shutil.which("setpriv") and os.getuid() == 0:
            other = subprocess.run(
                ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                 sys.executable, "-c", "import socket,sys; s=socket.socket(socket.AF_UNIX); "
                 f"s.connect({str(sock)!r}); s.sendall(b'quit\\n'); print(s.recv(999))"],
                capture_output=True, text=True, timeout=30)
            assert other.returncode != 0 and "PermissionError" in other.stderr
            os.chmod(sock, 0o666)  # were the mode ever opened, the peer's user is still checked
            other = subprocess.run(
                ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                 sys.executable, "-c", "import socket,sys; s=socket.socket(socket.AF_UNIX); "
                 f"s.connect({str(sock)!r}); print(s.recv(999)); s.sendall(b'quit\\n')"],
                capture_output=True, text=True, timeout=30)
            assert "obeys the user that started the run only" in other.stdout, other.stderr
            assert proc.poll() is None  # the other user's quit was not obeyed
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(sock))
            s.sendall(b"x" * 100_000 + b"\n")
            reply = json.loads(s.makefile().readline())
            assert reply["ok"] is False and "longer than 4096 bytes" in reply["error"]
        assert proc.poll() is None  # still running
        from edge_calib.runtime.control import send_command

        assert send_command(str(sock), "status")["ok"] is True
        assert send_command(str(sock), "quit")["ok"] is True
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(shared, ignore_errors=True)


def write_big_png(path, side=9000):
    """A real, valid grey PNG of side x side pixels (81 MP: over the 67 MP cap), a few hundred
    KB on disk, written row by row."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    packer, row, body = zlib.compressobj(9), b"\0" * (side + 1), []
    for _ in range(side):
        body.append(packer.compress(row))
    body.append(packer.flush())
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8,
                                                                        0, 0, 0, 0))
                     + chunk(b"IDAT", b"".join(body)) + chunk(b"IEND", b""))
    return path


def test_an_oversized_image_is_refused_undecoded(bundle_dir, trained_dtn, frame_folder,
                                                 tmp_path):
    """`run` counts it as a skipped frame and goes on; a dataset folder names it and the cap."""
    import shutil

    folder = tmp_path / "frames"
    shutil.copytree(frame_folder, folder)
    big = write_big_png(folder / "005b.png")
    assert big.stat().st_size < 2_000_000
    r = invoke("run", "--deploy", bundle_dir, "--input", folder, "--domain", "usps",
               "--headless", "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output.strip().splitlines()[-1])
    assert summary["frames"] == 12 and summary["corrupt"] == 1
    assert f"skipped {big}: 9000x9000 pixels is over the cap" in r.output  # named, once
    assert r.output.count("over the cap") == 1
    r = invoke("eval", "--classifier", trained_dtn, "--dataset", folder, "--unlabelled")
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.output.strip().splitlines()[-1] == (
        f"error: {big}: 9000x9000 pixels is over the cap of 67,108,864 pixels; resize it first")


def test_every_format_has_the_pixel_cap_and_a_truncated_jpeg_is_corrupt(bundle_dir, trained_dtn,
                                                                        frame_folder, tmp_path):
    """A TIFF over the cap (OpenCV's own check, set by edge-calib: its header is not one we
    read) and a JPEG cut short: `run` skips both as corrupt frames and names each once, with
    no decoder message; a dataset folder names the file in one line."""
    import shutil

    folder = tmp_path / "frames"
    shutil.copytree(frame_folder, folder)
    tiff = folder / "005b.tiff"
    assert cv2.imwrite(str(tiff), np.zeros((8000, 9000), np.uint8))  # 72 MP, about 1 MB
    frame = cv2.imread(str(folder / "006.png"))
    ok, jpg = cv2.imencode(".jpg", cv2.resize(frame, (256, 256)))
    cut = folder / "006b.jpg"
    cut.write_bytes(jpg.tobytes()[:len(jpg) // 2])
    def cli(*args):  # a real process: OpenCV reads its cap when it is loaded
        return subprocess.run([sys.executable, "-m", "edge_calib.cli", *map(str, args)],
                              capture_output=True, text=True, timeout=300)

    r = cli("run", "--deploy", bundle_dir, "--input", folder, "--domain", "usps", "--headless",
            "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["frames"] == 12 and summary["corrupt"] == 2
    assert r.stderr.count(f"skipped {tiff}: over the cap of 67,108,864 pixels") == 1
    assert r.stderr.count(f"skipped {cut}: a truncated JPEG") == 1
    assert "Premature end" not in r.stderr and "Corrupt JPEG" not in r.stderr
    for bad, words in ((tiff, "over the cap of 67,108,864 pixels"),
                       (cut, "a truncated JPEG (no end-of-image marker)")):
        alone = tmp_path / bad.stem
        alone.mkdir()
        shutil.copy(frame_folder / "000.png", alone)
        shutil.copy(bad, alone)
        r = cli("eval", "--classifier", trained_dtn, "--dataset", alone, "--unlabelled")
        assert r.returncode == 2 and r.stderr.strip().splitlines() == [
            line for line in r.stderr.strip().splitlines() if line.startswith("error: ")]
        assert r.stderr.strip().startswith(f"error: {alone / bad.name}: {words}")


LIMITED_RUN = """
import re, resource, sys
import cv2, numpy, onnxruntime
from edge_calib.cli import main
vm = int(re.search(r"VmSize:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 200 * 2**20,) * 2)
sys.argv = ["edge-calib", *sys.argv[1:]]
main()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc: Linux")
def test_capture_that_runs_out_of_memory_fails_the_run_and_keeps_the_old_output(bundle_dir,
                                                                               tmp_path):
    """Under a memory limit (200 MB of address space above the imported modules) a 62 MP frame
    (under the pixel cap) cannot be decoded: the capture thread's error ends the run with exit 1
    and one line, the previous predictions file stays, the frames before it go beside it."""
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(frames / f"{i:02d}.png"), rng.integers(0, 255, (64, 64, 3), np.uint8))
    cv2.imwrite(str(frames / "03.png"), np.zeros((7800, 8000, 3), np.uint8))
    cv2.imwrite(str(frames / "04.png"), rng.integers(0, 255, (64, 64, 3), np.uint8))
    preds = tmp_path / "p.jsonl"
    preds.write_text("".join(json.dumps({"index": i}) + "\n" for i in range(21)))
    before = preds.read_bytes()
    proc = subprocess.run([sys.executable, "-c", LIMITED_RUN, "run", "--deploy", str(bundle_dir),
                           "--input", str(frames), "--domain", "mnist", "--headless",
                           "--threads", "1", "--predictions", str(preds)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: reading ") and "memory" in error.lower(), error
    assert "p.partial.jsonl" in error
    assert preds.read_bytes() == before
    partial = (tmp_path / "p.partial.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in partial] == [0, 1, 2]


@pytest.mark.parametrize("flag,value", [("--fps", "nan"), ("--fps", "inf"), ("--fps", "0"),
                                        ("--fps", "1e-300"), ("--fps", "1e308"), ("--reconnect-timeout", "inf"),
                                        ("--reconnect-timeout", "-1"), ("--input-width", "0"),
                                        ("--camera", "-1"), ("--max-frames", str(2**63)),
                                        ("--queue", "99999999999")])
def test_run_numbers_outside_their_range_are_one_line_before_any_work(tmp_path, flag, value):
    """Values at the edge of their type (they reached a sleep, an int() or a deque) are refused
    by the option itself: exit 2, one line naming the option, no output written."""
    result = invoke("run", "--deploy", str(tmp_path / "no-bundle"), "--input", str(tmp_path),
                    "--domain", "x", "--headless", "--predictions", str(tmp_path / "p.jsonl"),
                    flag, value)
    assert result.exit_code == 2
    assert f"Invalid value for '{flag}'" in result.output
    assert not (tmp_path / "p.jsonl").exists()


def test_idle_control_clients_give_their_slots_back(tmp_path, monkeypatch):
    """Real UNIX sockets: MAX_CLIENTS idle connections take every slot (one more is refused
    in one reply line); after the idle timeout (1 s here) they are closed and a command is
    answered again."""
    from edge_calib.runtime import control

    monkeypatch.setattr(control, "IDLE_TIMEOUT_S", 1.0)
    channel = control.ControlChannel(str(tmp_path / "ec.sock"))
    try:
        idle = []
        for _ in range(control.MAX_CLIENTS):
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(tmp_path / "ec.sock"))
            idle.append(s)
        time.sleep(0.5)
        extra = socket.socket(socket.AF_UNIX)
        extra.settimeout(5)
        extra.connect(str(tmp_path / "ec.sock"))
        assert "too many connections" in json.loads(extra.recv(4096))["error"]
        time.sleep(1.5)
        for s in idle:
            s.settimeout(5)
            assert s.recv(1) == b""  # closed by the run
        answer = {}
        client = threading.Thread(target=lambda: answer.update(
            control.send_command(str(tmp_path / "ec.sock"), "status")))
        client.start()
        deadline = time.time() + 10
        while not answer and time.time() < deadline:
            for command in channel.pending():
                command.reply.put({"ok": True, "seen": command.text})
            time.sleep(0.05)
        client.join(timeout=10)
        assert answer == {"ok": True, "seen": "status"}
    finally:
        channel.close()


def test_out_of_file_descriptors_is_the_runs_error_not_corrupt_frames(bundle_dir, frame_folder,
                                                                       tmp_path):
    """A running process whose open-file limit is lowered to what it holds (prlimit, as a
    board's ulimit would bite): the next frame cannot be opened. That is the run's failure,
    not a corrupt frame: exit 1, one error line naming the limit, `error` in the summary,
    no frame counted corrupt."""
    import resource

    preds = tmp_path / "p.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "edge_calib.cli", "run", "--deploy",
                             str(bundle_dir), "--input", str(frame_folder), "--loop",
                             "--realtime", "--fps", "50", "--domain", "usps", "--headless",
                             "--threads", "1", "--json", "--predictions", str(preds)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not any(p.stat().st_size > 0 for p in tmp_path.glob(".p.jsonl.*.partial.jsonl")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.1)
    held = len(list((Path("/proc") / str(proc.pid) / "fd").iterdir()))
    resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (held, held))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-2000:]
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Too many open files (the process's own limit, not a bad file)" \
        in errors[0], err[-2000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["error"] and "Too many open files" in summary["error"]
    assert summary["corrupt"] == 0 and summary["frames"] > 0
