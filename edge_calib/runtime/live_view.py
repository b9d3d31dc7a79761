"""``run --output http://HOST:PORT``: the annotated stream for a headless board, viewed in a
browser (as jetson-inference streams its output).

- ``/`` a small page: the stream, the current domain, FPS and the last switch (refreshed from
  ``/status.json`` once a second);
- ``/stream.mjpg`` the annotated frames as MJPEG (``multipart/x-mixed-replace``);
- ``/status.json`` the page's figures.

The loop only swaps the latest JPEG in under a lock; each viewer has its own thread that sends
the newest frame when it can, so a viewer that stalls or leaves skips frames and never slows the
loop. Frames are encoded only while someone watches.
"""

from __future__ import annotations

import html
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import cv2
import numpy as np

from ..core.errors import EdgeCalibError

BOUNDARY = "edgecalibframe"
MAX_VIEWERS = 16
SEND_TIMEOUT_S = 10.0  # a viewer whose socket takes no bytes for this long is dropped
REQUEST_TIMEOUT_S = 10.0  # a connection that sends no complete request line in this is closed
MAX_CONNECTIONS = 64  # every HTTP connection at once (pages, status, viewers, idle sockets)
MAX_PER_ADDRESS = 8  # of those, from one client address: one host cannot hold every slot
JPEG_QUALITY = 80

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>edge-calib {title}</title>
<style>body{{font-family:sans-serif;background:#111;color:#ddd;margin:1em}}
img{{max-width:100%;border:1px solid #444}} b{{color:#8f8}}</style></head>
<body><h3>edge-calib &middot; {title}</h3>
<p>domain <b id="domain">{domain}</b> &middot; <span id="fps">{fps}</span> FPS &middot;
frames <span id="frames">{frames}</span> &middot; last switch <span id="switch">{switch}</span>
&middot; collecting <span id="collecting">{collecting}</span></p>
<img src="/stream.mjpg" alt="annotated stream">
<script>
setInterval(async () => {{
  try {{
    const s = await (await fetch('/status.json')).json();
    document.getElementById('domain').textContent = s.domain + (s.auto ? ' [auto]' : '');
    document.getElementById('fps').textContent = s.fps.toFixed(1);
    document.getElementById('frames').textContent = s.frames;
    document.getElementById('switch').textContent = s.last_switch || 'none';
    document.getElementById('collecting').textContent = s.collecting || 'nothing';
  }} catch (e) {{}}
}}, 1000);
</script></body></html>
"""


def parse_live_url(url: str) -> tuple[str, int]:
    """``http://HOST:PORT`` -> (host, port); anything else is one clear error."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or not parts.hostname or port is None or parts.path not in ("", "/") \
            or parts.query or parts.fragment:
        raise EdgeCalibError(f"--output {url}: a live view is http://HOST:PORT (e.g. "
                             "http://0.0.0.0:8080; port 0 picks a free one)")
    return parts.hostname, port


def describe_switch(entry: dict | None) -> str | None:
    if not entry:
        return None
    return f"{entry['from']} -> {entry['to']} ({entry['by']}) at frame {entry['frame']}"


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    timeout = REQUEST_TIMEOUT_S  # socketserver applies it to the connection before any read

    def log_message(self, *args):  # the run's stderr is for the run
        pass

    def do_GET(self):
        path = urlsplit(self.path).path
        view = self.server.view
        if path == "/":
            s = view.status()
            body = PAGE.format(title=html.escape(view.title), domain=html.escape(str(s["domain"])),
                               fps=f"{s['fps']:.1f}", frames=s["frames"],
                               switch=html.escape(s["last_switch"] or "none"),
                               collecting=html.escape(s["collecting"] or "nothing")).encode()
            self._send(200, "text/html; charset=utf-8", body)
        elif path == "/status.json":
            self._send(200, "application/json", json.dumps(view.status()).encode())
        elif path == "/stream.mjpg":
            self._stream(view)
        else:
            self._send(404, "text/plain", b"not found: try / or /stream.mjpg\n")

    def _send(self, code: int, kind: str, body: bytes):
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _stream(self, view: "LiveView"):
        if not view.join():
            self._send(503, "text/plain", f"at most {MAX_VIEWERS} viewers\n".encode())
            return
        try:
            self.connection.settimeout(SEND_TIMEOUT_S)
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            seen = 0  # the sequence number before the first frame
            while True:
                seen, jpeg = view.next_frame(seen)
                if jpeg is None:  # the run is over
                    return
                self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                 f"Content-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n")
                self.wfile.flush()
        except (OSError, socket.timeout):  # the viewer left or stalled: drop it
            return
        finally:
            view.leave()


class _Server(ThreadingHTTPServer):
    """At most MAX_CONNECTIONS connections are served at once, at most MAX_PER_ADDRESS of them
    from one client address, each in its own thread: one more is closed at once (its thread
    never starts). A client that leaves mid-reply is not an error of the run's (nothing is
    printed)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, *args):
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}  # open connections per client address
        self.refused = 0
        super().__init__(*args)

    def _take(self, address: str) -> bool:
        with self._lock:
            held = self._held.get(address, 0)
            if held >= MAX_PER_ADDRESS or sum(self._held.values()) >= MAX_CONNECTIONS:
                self.refused += 1
                return False
            self._held[address] = held + 1
            return True

    def _give_back(self, address: str) -> None:
        with self._lock:
            self._held[address] -= 1
            if not self._held[address]:
                del self._held[address]

    def process_request(self, request, client_address):
        if not self._take(client_address[0]):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread: the slot is not held
            self._give_back(client_address[0])
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._give_back(client_address[0])

    def handle_error(self, request, client_address):
        pass  # a client that disconnected or sent garbage: its connection is closed, that's all


class LiveView:
    """The HTTP server of the live view; ``write`` publishes one annotated frame (BGR)."""

    needs_annotated = True

    def __init__(self, url: str, title: str = "run"):
        host, port = parse_live_url(url)
        try:
            self.server = _Server((host, port), _Handler)
        except OSError as exc:
            raise EdgeCalibError(f"--output {url}: cannot listen there ({exc.strerror or exc})") \
                from None
        self.server.view = self
        self.title = title
        self.url = f"http://{host}:{self.server.server_address[1]}/"
        self._cond = threading.Condition()
        self._jpeg: bytes | None = None
        self._seq = 0
        self._viewers = 0
        self._closed = False
        self._status = {"domain": None, "auto": False, "fps": 0.0, "frames": 0,
                        "last_switch": None, "collecting": None}
        self.frames_sent = 0
        self._thread = threading.Thread(target=self.server.serve_forever, name="live-view",
                                        daemon=True)
        self._thread.start()

    # -- the loop's side ------------------------------------------------------------------
    def write(self, delivered) -> None:
        """Publish a frame and the figures the page shows; encodes only while someone watches."""
        self._status = {"domain": delivered.domain, "auto": delivered.status.get("auto", False),
                        "fps": round(float(delivered.status.get("fps", 0.0)), 2),
                        "frames": int(delivered.status.get("frames", 0)),
                        "last_switch": describe_switch(delivered.status.get("last_switch")),
                        "collecting": delivered.status.get("collecting")}
        if self._viewers == 0:
            return
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(delivered.annotated),
                               [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            return
        with self._cond:
            self._jpeg, self._seq = buf.tobytes(), self._seq + 1
            self._cond.notify_all()

    def close(self, complete: bool = True):
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self.server.shutdown()
        self.server.server_close()
        return None

    # -- the viewers' side ----------------------------------------------------------------
    def status(self) -> dict:
        return dict(self._status)

    def join(self) -> bool:
        with self._cond:
            if self._viewers >= MAX_VIEWERS or self._closed:
                return False
            self._viewers += 1
            return True

    def leave(self) -> None:
        with self._cond:
            self._viewers -= 1

    def next_frame(self, seen: int) -> tuple[int, bytes | None]:
        """The newest frame after ``seen`` (waits for one); (seq, None) once the run is over."""
        with self._cond:
            while (self._seq == seen or self._jpeg is None) and not self._closed:
                self._cond.wait(1.0)
            if self._closed:
                return self._seq, None
            self.frames_sent += 1
            return self._seq, self._jpeg
