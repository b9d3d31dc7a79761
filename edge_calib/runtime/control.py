"""Line commands while the stream runs: ``domain NAME``, ``status``, ``reload``, ``quit``.

From a UNIX socket (``--control PATH``; one command per line, one JSON reply per line) or
from standard input (``--control -``). Commands are queued and applied by the pipeline between
frames, so a switch takes effect on the next frame.

The socket obeys its owner only, whatever the umask: it is created owner-only (mode 0600) and
a connection from another user is answered with an error and closed (the peer's credentials,
SO_PEERCRED). A line longer than MAX_LINE bytes is answered with an error and the connection
closed; at most MAX_CLIENTS connections are served at once, and one that sends no complete
line for IDLE_TIMEOUT_S is closed, so idle clients cannot hold every slot.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import stat
import struct
import sys
import threading
import time

from ..core.errors import EdgeCalibError

MAX_LINE = 4096  # bytes of one command line
MAX_CLIENTS = 8
IDLE_TIMEOUT_S = 30.0  # a connection that sends no complete line for this long is closed


class Command:
    def __init__(self, text: str):
        self.text = text.strip()
        self.received = time.perf_counter()  # switch figures count from here
        self.reply: queue.Queue[dict] = queue.Queue(maxsize=1)


class ControlChannel:
    def __init__(self, where: str):
        self.where = where
        self.commands: queue.Queue[Command] = queue.Queue()
        self.stopped = threading.Event()
        self.server = None
        self.inode = None
        if where == "-":
            target = self._read_stdin
        else:
            self.server = _listen(where)
            self.inode = os.stat(where).st_ino
            target = self._serve
        self.thread = threading.Thread(target=target, name="control", daemon=True)
        self.thread.start()

    def _submit(self, text: str, timeout: float = 5.0) -> dict:
        command = Command(text)
        self.commands.put(command)
        try:
            return command.reply.get(timeout=timeout)
        except queue.Empty:
            return {"ok": False, "error": "the pipeline did not answer (stopped?)"}

    def _read_stdin(self):
        for line in sys.stdin:
            if self.stopped.is_set():
                break
            if line.strip():
                print(json.dumps(self._submit(line)), file=sys.stderr, flush=True)

    def _serve(self):
        clients = threading.BoundedSemaphore(MAX_CLIENTS)
        while not self.stopped.is_set():
            try:
                conn, _ = self.server.accept()
            except (socket.timeout, OSError):
                continue
            if not _same_user(conn):
                _refuse(conn, "this socket obeys the user that started the run only")
            elif not clients.acquire(blocking=False):
                _refuse(conn, f"too many connections (at most {MAX_CLIENTS})")
            else:
                threading.Thread(target=self._client, args=(conn, clients), daemon=True).start()

    def _client(self, conn, clients):
        try:
            conn.settimeout(IDLE_TIMEOUT_S)  # an idle client gives its slot back
            with conn, conn.makefile("rwb") as stream:
                while not self.stopped.is_set():
                    line = stream.readline(MAX_LINE + 1)
                    if not line:
                        return
                    if len(line) > MAX_LINE and not line.endswith(b"\n"):
                        stream.write(_reply({"ok": False, "error": f"line longer than "
                                                                   f"{MAX_LINE} bytes"}))
                        stream.flush()
                        return
                    text = line.decode("utf-8", errors="replace")
                    if text.strip():
                        stream.write(_reply(self._submit(text)))
                        stream.flush()
        except OSError:
            pass  # the client went away, or sent nothing for IDLE_TIMEOUT_S
        finally:
            clients.release()

    def pending(self):
        """Commands received since the last call (non-blocking)."""
        while True:
            try:
                yield self.commands.get_nowait()
            except queue.Empty:
                return

    def close(self):
        self.stopped.set()
        if self.server is not None:
            self.server.close()
            try:  # remove our socket only, never a file that replaced it meanwhile
                if os.stat(self.where).st_ino == self.inode:
                    os.unlink(self.where)
            except OSError:
                pass


def _reply(message: dict) -> bytes:
    return (json.dumps(message) + "\n").encode()


def _refuse(conn: socket.socket, why: str) -> None:
    try:
        conn.sendall(_reply({"ok": False, "error": why}))
    except OSError:
        pass
    finally:
        conn.close()


def _same_user(conn: socket.socket) -> bool:
    """The connecting process runs as this process's user (or as root)."""
    try:
        _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                         struct.calcsize("3i")))
    except (OSError, AttributeError):  # no SO_PEERCRED here: the file mode still guards it
        return True
    return uid in (os.getuid(), 0)


def _listen(path: str) -> socket.socket:
    """A listening UNIX socket at ``path``. An existing socket is replaced only when no one
    answers on it (a stale socket of a killed run); anything else at ``path`` is an error."""
    if os.path.lexists(path):
        mode = os.lstat(path).st_mode
        if not stat.S_ISSOCK(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "a file"
            raise EdgeCalibError(f"--control {path}: {kind} is there, not a socket; give another "
                                 "path (edge-calib never deletes what is not its own socket)")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
            raise EdgeCalibError(f"--control {path}: another edge-calib run is listening there")
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)  # a stale socket: nobody listens any more
        finally:
            probe.close()
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise EdgeCalibError(f"--control {path}: folder {folder} does not exist")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    umask = os.umask(0o177)  # owner-only from the moment it exists
    try:
        server.bind(path)
        os.chmod(path, 0o600)
    except OSError as exc:
        server.close()
        raise EdgeCalibError(f"--control {path}: cannot create a socket there "
                             f"({exc.strerror})") from None
    finally:
        os.umask(umask)
    server.listen(MAX_CLIENTS)
    server.settimeout(0.2)
    return server


def send_command(path: str, text: str, timeout: float = 5.0) -> dict:
    """Client side: one command to a running ``edge-calib run --control PATH``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall((text.strip() + "\n").encode())
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return json.loads(data.decode())
