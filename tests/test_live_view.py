"""The live view (``run --output http://HOST:PORT``): the real server on 127.0.0.1, read by real
HTTP clients (urllib and raw sockets), including viewers that stall."""

import json
import select
import socket
import threading
import time
import urllib.request

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edge_calib.cli import main
from edge_calib.core.errors import EdgeCalibError
from edge_calib.runtime.live_view import LiveView, parse_live_url
from edge_calib.runtime.sources import parse_source
from edge_calib.runtime.stream import RunOptions, StreamRunner
from helpers import wait_until


def live_view_of(runner) -> LiveView:
    return next(s for s in runner.sinks if isinstance(s, LiveView))


def read_mjpeg_frames(url: str, count: int, timeout: float = 30.0) -> list[bytes]:
    """``count`` JPEG parts of a multipart/x-mixed-replace stream, read by hand from the socket."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        assert response.headers["Content-Type"].startswith("multipart/x-mixed-replace; boundary=")
        boundary = response.headers["Content-Type"].split("boundary=")[1].encode()
        frames, deadline = [], time.monotonic() + timeout
        while len(frames) < count:
            assert time.monotonic() < deadline, f"{len(frames)} of {count} frames in {timeout} s"
            line = response.readline()
            assert line, "the stream ended"
            if line.strip() != b"--" + boundary:
                continue
            headers = {}
            while (line := response.readline().strip()):
                key, value = line.decode().split(":", 1)
                headers[key.lower()] = value.strip()
            assert headers["content-type"] == "image/jpeg"
            frames.append(response.read(int(headers["content-length"])))
        return frames


def stalled_viewer(url: str) -> socket.socket:
    """A viewer that asks for the stream and never reads it (a tiny receive buffer, so the
    server's writes to it block almost at once)."""
    host, port = parse_live_url(url.rstrip("/"))
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    s.connect((host, port))
    s.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
    return s


def looping_live_view(bundle_dir, domain_video):
    """A real-time runner on the looping test video with the live view on a free port:
    (runner, its LiveView, (host, port))."""
    video, _ = domain_video
    opts = RunOptions(deploy=str(bundle_dir), domain="usps", headless=True,
                      outputs=("http://127.0.0.1:0",), realtime=True)
    runner = StreamRunner(opts, parse_source(None, str(video), fps=60, loop=True))
    view = live_view_of(runner)
    return runner, view, parse_live_url(view.url.rstrip("/"))


def closed(sockets) -> int:
    """How many of ``sockets`` the server has closed (readable, and reading gives EOF)."""
    ready = select.select(sockets, [], [], 0)[0]
    return sum(s.recv(1) == b"" for s in ready)


def start(runner):
    result = {}
    thread = threading.Thread(target=lambda: result.update(runner.run().to_dict()))
    thread.start()
    return thread, result


def test_live_view_serves_the_page_the_stream_and_the_status(bundle_dir, domain_video, tmp_path):
    video, _ = domain_video
    opts = RunOptions(deploy=str(bundle_dir), domain="usps", headless=True,
                      outputs=("http://127.0.0.1:0", str(tmp_path / "out.avi")),
                      predictions=str(tmp_path / "p.jsonl"), realtime=True)
    runner = StreamRunner(opts, parse_source(None, str(video), fps=60, loop=True))
    view = live_view_of(runner)
    thread, result = start(runner)
    try:
        wait_until(lambda: runner.times.frames >= 5, thread)
        page = urllib.request.urlopen(view.url, timeout=10).read().decode()
        assert "usps" in page and '<img src="/stream.mjpg"' in page
        frames = read_mjpeg_frames(view.url + "stream.mjpg", 3)
        for jpeg in frames:
            assert jpeg[:2] == b"\xff\xd8" and jpeg[-2:] == b"\xff\xd9"
            image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            assert image.shape[1] >= 320  # the annotated frame, enlarged like the video's
        assert len(set(frames)) > 1  # it moves
        status = json.loads(urllib.request.urlopen(view.url + "status.json", timeout=10).read())
        assert status["domain"] == "usps" and status["frames"] >= 5 and status["fps"] > 0
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(view.url + "nope", timeout=10)
    finally:
        runner.request_stop()
        thread.join(timeout=60)
    assert result["error"] is None and result["outputs"]["live_view"] == [view.url]
    # combined with a file output and the predictions log: both written in full
    assert (tmp_path / "out.avi").stat().st_size > 0
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == result["frames"]
    with pytest.raises(OSError):  # the server is closed at the end of the run
        urllib.request.urlopen(view.url, timeout=5)


def test_stalled_viewers_do_not_slow_the_loop(bundle_dir, domain_video):
    """Three viewers that never read and one that does: the loop runs about as fast as with no
    viewer (JPEG encoding aside; a loop that waited on a stalled socket would stop for 10 s), and the
    reading viewer still gets frames."""
    video, _ = domain_video

    def timed_run(watched: bool):
        opts = RunOptions(deploy=str(bundle_dir), domain="usps", headless=True,
                          outputs=("http://127.0.0.1:0",), max_frames=600)
        runner = StreamRunner(opts, parse_source(None, str(video), loop=True))
        viewers, got = [], []
        if watched:
            view = live_view_of(runner)
            viewers = [stalled_viewer(view.url) for _ in range(3)]
            reader = threading.Thread(target=lambda: got.extend(
                read_mjpeg_frames(view.url + "stream.mjpg", 20)), daemon=True)
            reader.start()
            wait_until(lambda: view._viewers == 4, reader, what="the viewers")
        started = time.perf_counter()
        summary = runner.run().to_dict()
        wall = time.perf_counter() - started
        for s in viewers:
            s.close()
        assert summary["frames"] == 600 and summary["error"] is None
        return wall, got

    base, _ = timed_run(watched=False)
    with_viewers, got = timed_run(watched=True)
    assert len(got) == 20  # the reading viewer was served while the others stalled
    assert with_viewers < 2.0 * base + 2.0, (base, with_viewers)


def test_live_view_url_and_port_errors(bundle_dir, domain_video):
    video, _ = domain_video
    for bad in ("http://127.0.0.1", "https://127.0.0.1:8080", "http://127.0.0.1:8080/x",
                "http://:8080"):
        with pytest.raises(EdgeCalibError, match="a live view is http://HOST:PORT"):
            parse_live_url(bad)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        r = CliRunner().invoke(main, ["run", "--deploy", str(bundle_dir), "--input", str(video),
                                      "--domain", "usps", "--headless",
                                      "--output", f"http://127.0.0.1:{port}"])
        assert r.exit_code != 0 and "cannot listen there" in r.output
        assert "Traceback" not in r.output
    finally:
        busy.close()


def test_idle_and_surplus_connections_cannot_starve_the_live_view(bundle_dir, domain_video,
                                                                  monkeypatch, capfd):
    """Real sockets on 127.0.0.1 (the cap set to 8 and the request timeout to 3 s for the
    test): of 12 idle connections the 4 over the cap are closed at once, the others when they
    have sent no request for the timeout; then the page answers again, frames flowed all along,
    and clients that leave mid-request or mid-reply print nothing."""
    from edge_calib.runtime import live_view

    monkeypatch.setattr(live_view, "MAX_CONNECTIONS", 8)
    monkeypatch.setattr(live_view._Handler, "timeout", 3.0)
    runner, view, (host, port) = looping_live_view(bundle_dir, domain_video)
    thread, result = start(runner)

    try:
        wait_until(lambda: runner.times.frames >= 5, thread)
        idle = [socket.create_connection((host, port)) for _ in range(12)]
        time.sleep(0.3)
        frames = runner.times.frames
        assert (closed(idle), view.server.refused) == (4, 4)  # over the cap: closed at once
        time.sleep(4.0)
        assert closed(idle) == 12  # the others too: no request within the timeout
        status = json.loads(urllib.request.urlopen(view.url + "status.json", timeout=10).read())
        assert status["frames"] > frames  # the loop went on meanwhile
        for s in idle:
            s.close()
        for request in (b"GET / HTTP/1.0\r\n\r\n", b"GET /stream.mjpg HTTP/1.0\r\n\r\n",
                        b"GET / HT"):
            s = socket.create_connection((host, port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.sendall(request)
            s.close()  # leaves at once (a reset)
        time.sleep(0.5)
        assert urllib.request.urlopen(view.url, timeout=10).status == 200
    finally:
        runner.request_stop()
        thread.join(timeout=60)
    assert result["error"] is None
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception" not in err, err[-2000:]


def test_one_address_cannot_hold_every_connection(bundle_dir, domain_video, monkeypatch):
    """Real sockets from two loopback addresses (caps set to 8 connections, 3 per address):
    8 idle connections from 127.0.0.1 get 3 slots and 5 are closed at once, and a client from
    127.0.0.2 is still served while they wait."""
    from edge_calib.runtime import live_view

    monkeypatch.setattr(live_view, "MAX_CONNECTIONS", 8)
    monkeypatch.setattr(live_view, "MAX_PER_ADDRESS", 3)
    runner, view, (host, port) = looping_live_view(bundle_dir, domain_video)
    thread, result = start(runner)
    try:
        wait_until(lambda: runner.times.frames >= 5, thread)
        idle = [socket.create_connection((host, port)) for _ in range(8)]
        time.sleep(0.3)
        assert (closed(idle), view.server.refused) == (5, 5)
        other = socket.create_connection((host, port), timeout=10, source_address=("127.0.0.2", 0))
        other.sendall(b"GET /status.json HTTP/1.0\r\n\r\n")
        reply = b"".join(iter(lambda: other.recv(4096), b""))
        assert reply.startswith(b"HTTP/1.0 200") and b'"frames"' in reply
        other.close()
        for s in idle:
            s.close()
    finally:
        runner.request_stop()
        thread.join(timeout=60)
    assert result["error"] is None


def test_every_sink_implements_the_declared_interface(tmp_path):
    """The display, video, predictions and live-view outputs are each a ``Sink``; a class
    without ``close`` is not."""
    from edge_calib.runtime.sinks import DisplaySink, Sink, open_sinks

    sinks = open_sinks((str(tmp_path / "v.avi"), "http://127.0.0.1:0"),
                       str(tmp_path / "p.jsonl"), True, 30.0, None, lambda m: None)
    try:
        assert [type(s).__name__ for s in sinks] == ["VideoSink", "LiveView", "PredictionSink"]
        assert all(isinstance(s, Sink) for s in sinks)
    finally:
        for s in sinks:
            s.close(False)
    assert isinstance(DisplaySink(lambda *a: None), Sink)

    class NoClose:
        needs_annotated = False

        def write(self, delivered):
            pass

    assert not isinstance(NoClose(), Sink)
