"""A live stream that disappears mid-run: a real MJPEG-over-HTTP server on 127.0.0.1."""

import http.server
import threading
import time

import cv2
import numpy as np

from edge_calib.runtime.sources import parse_source
from edge_calib.runtime.stream import RunOptions, StreamRunner

FRAMES = [cv2.imencode(".jpg", np.full((48, 48, 3), 12 * i, np.uint8))[1].tobytes() for i in range(20)]


class MjpegServer:
    """multipart/x-mixed-replace JPEG stream, as IP cameras serve; stop() drops every client."""

    def __init__(self, port=0):
        self.live = threading.Event()
        self.live.set()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                i = 0
                while outer.live.is_set():
                    jpg = FRAMES[i % len(FRAMES)]
                    try:
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                         + str(len(jpg)).encode() + b"\r\n\r\n" + jpg + b"\r\n")
                    except OSError:
                        return
                    i += 1
                    time.sleep(0.02)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.live.clear()
        self.httpd.shutdown()
        self.httpd.server_close()


def start_runner(bundle_dir, url, timeout):
    opts = RunOptions(deploy=str(bundle_dir), domain="usps", headless=True, reconnect_timeout=timeout)
    runner = StreamRunner(opts, parse_source(None, url))
    result = {}
    thread = threading.Thread(target=lambda: result.update(runner.run().to_dict()))
    thread.start()
    return runner, thread, result


def wait_for(condition, seconds=20):
    deadline = time.time() + seconds
    while not condition() and time.time() < deadline:
        time.sleep(0.05)
    assert condition()


def test_stream_that_comes_back_is_reconnected(bundle_dir):
    server = MjpegServer()
    url = f"http://127.0.0.1:{server.port}/stream.mjpg"
    runner, thread, result = start_runner(bundle_dir, url, timeout=20)
    wait_for(lambda: runner.times.frames >= 20)
    server.stop()
    time.sleep(1.5)  # the source is gone for a while
    before = runner.times.frames
    server = MjpegServer(port=server.port)
    wait_for(lambda: runner.capture.counts["reconnects"] >= 1 and runner.times.frames > before + 20)
    runner.stop_requested = True
    thread.join(timeout=20)
    server.stop()
    assert result["reconnects"] >= 1 and result["error"] is None


def test_stream_that_stays_away_gives_up_with_a_clear_message(bundle_dir):
    server = MjpegServer()
    url = f"http://127.0.0.1:{server.port}/stream.mjpg"
    runner, thread, result = start_runner(bundle_dir, url, timeout=1.0)
    wait_for(lambda: runner.times.frames >= 10)
    server.stop()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert "did not come back within --reconnect-timeout 1s" in result["error"]
    assert url in result["error"]
