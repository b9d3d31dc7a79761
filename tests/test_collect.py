"""``run --collect DIR``: frames of every stretch ``--domain auto`` calls unknown are kept on the
device (sampled, bounded, written atomically with a record), and ``collect NAME`` / ``collect
stop`` on the control socket do the same on demand; the stream never waits for the disk."""

import json
import os
import threading

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edge_calib.cli import main
from edge_calib.data import load_dataset
from edge_calib.imaging.domain_features import FEATURES, frame_features
from edge_calib.runtime.collect import DUPLICATE, FrameCollector, read_collection
from edge_calib.runtime.control import send_command
from edge_calib.runtime.sources import parse_source
from edge_calib.runtime.stream import RunOptions, StreamRunner
from edge_calib.runtime.testvideo import write_domain_video
from helpers import wait_until


@pytest.fixture(scope="module")
def new_domain_video(shared_data, tmp_path_factory):
    """40 MNIST frames, 60 recoloured ones (a domain the bundle does not know), 40 MNIST."""
    m = load_dataset("mnist", "test", shared_data)
    c = load_dataset("mnist:colour", "test", shared_data)
    path = tmp_path_factory.mktemp("collect") / "v.avi"
    write_domain_video(path, [("mnist", m.images[:40], m.labels[:40]),
                              ("colour", c.images[40:100], c.labels[40:100]),
                              ("mnist", m.images[100:140], m.labels[100:140])])
    return path


def run(bundle_dir, video, *extra):
    r = CliRunner().invoke(main, ["run", "--deploy", str(bundle_dir), "--input", str(video),
                                  "--domain", "auto", "--headless", "--json", *map(str, extra)])
    return r, (json.loads(r.stdout.strip().splitlines()[-1]) if r.stdout.strip() else None)


def test_an_unknown_stretch_is_collected_with_its_record(bundle_dir, new_domain_video, tmp_path):
    out = tmp_path / "frames"
    r, summary = run(bundle_dir, new_domain_video, "--collect", out, "--collect-rate", 0)
    assert r.exit_code == 0, r.output
    folders = sorted(p for p in out.iterdir())
    assert [p.name.startswith("unknown-") for p in folders] == [True]  # no .partial left
    record = read_collection(folders[0])
    assert record["reason"] == "unknown" and "the vote named 'mnist'" in record["ended_because"]
    files = sorted(p.name for p in folders[0].glob("*.jpg"))
    assert files == record["files"] and 30 <= record["frames"] <= 60
    frame = cv2.imread(str(folders[0] / files[0]))
    assert frame.shape == (96, 96, 3)  # the frame as captured, not the model's 32x32
    bundle_hash = (bundle_dir / "manifest.sha256").read_text().split()[0]
    assert record["bundle"]["manifest_sha256"] == bundle_hash
    assert len(record["features"]["mean"]) == FEATURES
    assert summary["collect"]["collections"] == 1 and summary["collect"]["error"] is None
    # what was kept is the recoloured stretch's frames (each voted unknown itself)
    capture = cv2.VideoCapture(str(new_domain_video))
    video = np.stack([capture.read()[1] for _ in range(140)]).astype(int)
    capture.release()
    positions = [int(np.abs(video - cv2.imread(str(folders[0] / name)).astype(int))
                     .mean(axis=(1, 2, 3)).argmin()) for name in files]
    assert all(40 <= p < 100 for p in positions)
    # the frames whose votes made the switch (some 11 frames into the stretch) are kept too
    assert min(positions) < 45 and positions == sorted(positions)


def test_collection_is_bounded_by_frames_and_by_its_disk_budget(bundle_dir, new_domain_video,
                                                                tmp_path):
    r, summary = run(bundle_dir, new_domain_video, "--collect", tmp_path / "a",
                     "--collect-rate", 0, "--collect-max", 5)
    assert r.exit_code == 0, r.output
    (folder,) = (tmp_path / "a").iterdir()
    record = read_collection(folder)
    assert record["frames"] == 5 and "--collect-max 5 frames reached" in record["ended_because"]
    # a budget of 12 kB: a few 96x96 frames fit, then one line, the frames kept, the run served
    r, summary = run(bundle_dir, new_domain_video, "--collect", tmp_path / "b",
                     "--collect-rate", 0, "--collect-budget", 0.012)
    assert r.exit_code == 0, r.output
    assert summary["frames"] == 140 and summary["collect"]["full"] is True
    assert sum("the disk budget of 12582 bytes is reached" in line
               for line in r.stderr.splitlines()) == 1
    (folder,) = (tmp_path / "b").iterdir()
    record = read_collection(folder)
    assert 1 <= record["frames"] and record["ended_because"] == "the disk budget is reached"
    assert sum(os.path.getsize(folder / f) for f in record["files"]) <= 12582


def test_collect_commands_on_the_control_socket(bundle_dir, new_domain_video, tmp_path):
    sock, out = str(tmp_path / "ec.sock"), tmp_path / "frames"
    opts = RunOptions(deploy=str(bundle_dir), domain="mnist", headless=True, control=sock,
                      realtime=True, collect=str(out), collect_rate=0)
    runner = StreamRunner(opts, parse_source(None, str(new_domain_video), fps=60, loop=False))
    result = {}
    thread = threading.Thread(target=lambda: result.update(runner.run().to_dict()))
    thread.start()
    wait_until(lambda: os.path.exists(sock) and runner.times.frames >= 5, thread)
    assert send_command(sock, "collect unknown")["ok"] is False  # a reserved name
    assert send_command(sock, "collect night") == {"ok": True, "collecting": "night"}
    assert send_command(sock, "status")["collect"]["collecting"] == "night"
    wait_until(lambda: runner.times.frames >= 30, thread)
    assert send_command(sock, "collect stop") == {"ok": True, "stopped": "night"}
    assert send_command(sock, "collect night")["error"].startswith("collection 'night' already")
    thread.join(timeout=60)
    record = read_collection(out / "night")
    assert record["reason"] == "command" and record["ended_because"] == "collect stop"
    assert record["frames"] >= 1 and result["collect"]["collections"] == 1


def test_sampling_skips_near_duplicates_and_keeps_the_rate(shared_data, tmp_path):
    """Real CamVid frames: the same frame again (re-encoded) is a duplicate, the next frame
    of the sequence is not; at 2 frames a second, a frame 0.1 s after the last kept one
    waits."""
    frames = load_dataset("camvid:dusk", "train", shared_data).images[:3]
    again = cv2.imdecode(cv2.imencode(".jpg", frames[0], [cv2.IMWRITE_JPEG_QUALITY, 80])[1],
                         cv2.IMREAD_UNCHANGED)
    f = frame_features(np.stack([frames[0], again, frames[1], frames[2]]))
    assert np.sqrt(np.mean((f[1] - f[0]) ** 2)) < DUPLICATE < np.sqrt(np.mean((f[2] - f[0]) ** 2))
    lines = []
    c = FrameCollector(tmp_path, 100, 10**8, 2.0, lambda: {"path": "b"}, lines.append)
    c.start("dusk", "command")
    c.offer(frames[0], f[0], 10.0)
    c.offer(again, f[1], 11.0)  # a duplicate
    c.offer(frames[1], f[2], 12.0)
    c.offer(frames[2], f[3], 12.1)  # too soon at 2 a second
    summary = c.close()
    assert (summary["written"], summary["skipped_duplicate"], summary["skipped_rate"]) == (2, 1, 1)
    record = read_collection(tmp_path / "dusk")
    assert record["frames"] == 2 and record["sampling"]["rate"] == 2.0
    kept = cv2.cvtColor(cv2.imread(str(tmp_path / "dusk" / record["files"][1])), cv2.COLOR_BGR2RGB)
    assert np.abs(kept.astype(int) - frames[1]).mean() < 3  # the frame itself, JPEG at 95


def test_a_collection_folder_that_cannot_be_written_is_one_line(bundle_dir, new_domain_video,
                                                                tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    r, _ = run(bundle_dir, new_domain_video, "--collect", blocker / "frames")
    assert r.exit_code != 0 and "--collect" in r.output and "cannot write there" in r.output
    assert "Traceback" not in r.output


def test_a_full_disk_ends_the_collection_keeps_its_frames_and_the_stream(bundle_dir,
                                                                        new_domain_video,
                                                                        tmp_path):
    """A real full disk (a 48 kB tmpfs): the stream serves every frame, the failed write is one
    line when it happens (and the exit's error line), the frames written before it stay on the
    disk, and the run exits non-zero."""
    from test_file_system import tmpfs

    with tmpfs(tmp_path / "small", "48k") as disk:
        r, summary = run(bundle_dir, new_domain_video, "--collect", disk, "--collect-rate", 0)
        assert r.exit_code == 1 and summary["frames"] == 140
        assert "No space left on device" in summary["collect"]["error"]
        said = [line for line in r.stderr.splitlines()
                if "cannot write a frame (No space left on device)" in line]
        assert len(said) == 2 and said[1].startswith("error: ")  # when it happened, at exit
        assert "Traceback" not in r.output
        kept = list(disk.rglob("*.jpg"))
        assert len(kept) >= 1 and len(kept) == summary["collect"]["written"]
        assert all(cv2.imread(str(p)) is not None for p in kept)  # whole frames, readable
