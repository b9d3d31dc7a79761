"""Downloads through a real HTTP server on 127.0.0.1 (with Range support): success, resume,
checksum failure, unreachable mirror."""

import hashlib
import http.server
import re
import threading

import pytest

from edge_calib.data.download import RemoteFile, fetch_file
from edge_calib.core.errors import EdgeCalibError


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    requests_seen: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        RangeHandler.requests_seen.append((self.path, self.headers.get("Range")))
        path = self.translate_path(self.path)
        try:
            data = open(path, "rb").read()
        except OSError:
            self.send_error(404)
            return
        match = re.match(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(match.group(1)) if match else 0
        self.send_response(206 if match else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


@pytest.fixture
def server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = lambda *a, **k: RangeHandler(*a, directory=str(served), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    RangeHandler.requests_seen = []
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def remote_for(data: bytes, name="blob.bin", base="http://unused/") -> RemoteFile:
    return RemoteFile(name, (base + name,), "sha256", hashlib.sha256(data).hexdigest())


def test_download_and_verify(server, tmp_path):
    served, url = server
    data = bytes(range(256)) * 1000
    (served / "blob.bin").write_bytes(data)
    dest = tmp_path / "out" / "blob.bin"
    fetch_file(remote_for(data), dest, mirror=url, progress=False)
    assert dest.read_bytes() == data
    assert not dest.with_name("blob.bin.part").exists()
    fetch_file(remote_for(data), dest, mirror=url, progress=False)  # verified copy: no request
    assert len(RangeHandler.requests_seen) == 1


def test_resume_uses_range(server, tmp_path):
    served, url = server
    data = bytes(range(256)) * 1000
    (served / "blob.bin").write_bytes(data)
    dest = tmp_path / "blob.bin"
    dest.with_name("blob.bin.part").write_bytes(data[:70_000])
    fetch_file(remote_for(data), dest, mirror=url, progress=False)
    assert dest.read_bytes() == data
    assert RangeHandler.requests_seen[-1][1] == "bytes=70000-"


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    served, url = server
    (served / "blob.bin").write_bytes(b"tampered content")
    dest = tmp_path / "blob.bin"
    with pytest.raises(EdgeCalibError, match="checksum mismatch"):
        fetch_file(remote_for(b"the real content"), dest, mirror=url, progress=False)
    assert not dest.exists() and not dest.with_name("blob.bin.part").exists()


def test_unreachable_mirror_says_where_to_put_the_file(tmp_path):
    dest = tmp_path / "blob.bin"
    remote = RemoteFile("blob.bin", ("http://127.0.0.1:9/blob.bin",), "md5", "0" * 32)
    with pytest.raises(EdgeCalibError, match=f"copy the canonical file to {dest}"):
        fetch_file(remote, dest, progress=False, timeout=2)


def test_fetch_cli_through_local_mirror(server, tmp_path, shared_data):
    from click.testing import CliRunner

    from edge_calib.cli import main

    served, url = server
    for name in ("zip.train.gz", "zip.test.gz"):
        (served / name).write_bytes((shared_data / "usps" / name).read_bytes())
    result = CliRunner().invoke(main, ["data", "fetch", "usps", "--root", str(tmp_path / "d"),
                                       "--mirror", url, "--quiet"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "d" / "usps" / "zip.test.gz").read_bytes() == \
        (shared_data / "usps" / "zip.test.gz").read_bytes()


def test_camvid_fetch_checks_labels_and_frames(server, camvid_root, tmp_path):
    """Three real CamVid frames (as PNG, the SegNet tutorial's format) and their canonical
    labels on a local server: fetched, label checksums from the package's list verified."""
    import cv2

    from edge_calib.data import load_dataset
    from edge_calib.data.camvid import fetch_camvid, listed_files

    served, url = server
    wanted = [row for row in listed_files() if row[0] == "test"][:3]
    for split, stem, _ in wanted:
        (served / f"{split}annot").mkdir(exist_ok=True)
        (served / split).mkdir(exist_ok=True)
        label = (camvid_root / f"camvid/{split}annot/{stem}.png").read_bytes()
        (served / f"{split}annot/{stem}.png").write_bytes(label)
        frame = cv2.imread(str(camvid_root / f"camvid/{split}/{stem}.jpg"))
        cv2.imwrite(str(served / f"{split}/{stem}.png"), frame)
    root = tmp_path / "data"
    paths = fetch_camvid(root, mirror=url, progress=False, files=wanted)
    assert len(paths) == 6 and (root / "camvid/SHA256SUMS.fetched").is_file()
    assert len(load_dataset("camvid:dusk", "test", root)) == 3
    # a label that is not the canonical file: refused, nothing left under its name
    (served / "testannot" / f"{wanted[0][1]}.png").write_bytes(b"\x89PNG not the label")
    with pytest.raises(EdgeCalibError, match="checksum mismatch.*Offline, copy the SegNet"):
        fetch_camvid(tmp_path / "other", mirror=url, progress=False, files=wanted)
    assert not (tmp_path / "other/camvid/testannot" / f"{wanted[0][1]}.png").exists()
