"""What the file system refuses (BAD_INPUTS, second round): a full disk, a read-only folder and a
name too long give one line, exit 1, and leave nothing behind and the previous files intact.
A full disk and a read-only file system are real: small tmpfs mounts (skipped where this user
cannot mount)."""

import contextlib
import subprocess
import sys

import cv2
import numpy as np
import pytest


def edge_calib(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "edge_calib.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def one_error_line(proc, words: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines
    return lines[0]


@contextlib.contextmanager
def tmpfs(path, size: str, read_only: bool = False):
    path.mkdir()
    options = f"size={size}" + (",ro" if read_only else "")
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def noise_frames(folder, count: int, size: tuple[int, int]):
    """``count`` PNG frames of seeded random noise (incompressible: they fill a small disk)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        cv2.imwrite(str(folder / f"{i:04d}.png"), rng.integers(0, 255, (*size, 3), np.uint8))
    return folder


def export(trained_dtn, out):
    return edge_calib("export", "--classifier", trained_dtn, "--calibrator", "mnist=identity",
                      "--no-auto-domain", "--quiet", "--out", out)


def test_a_name_too_long_is_one_line(trained_dtn, tmp_path):
    proc = export(trained_dtn, tmp_path / ("b" * 300))
    line = one_error_line(proc, "File name too long")
    assert len(line) < 200  # the name is shortened in the message
    assert list(tmp_path.iterdir()) == []


def test_export_onto_a_full_disk_leaves_the_disk_empty(trained_dtn, tmp_path):
    with tmpfs(tmp_path / "small", "256k") as disk:
        one_error_line(export(trained_dtn, disk / "bundle"), "No space left on device")
        assert list(disk.iterdir()) == []


def test_export_into_a_read_only_folder_is_one_line(trained_dtn, tmp_path):
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as folder:
        one_error_line(export(trained_dtn, folder / "bundle"), "Read-only file system")


def test_run_on_a_full_disk_keeps_the_old_predictions_and_no_temporary(bundle_dir, tmp_path):
    """The predictions fill a 16 KB disk part way through 300 frames: exit 1 and one line; the
    previous predictions file is intact and the temporary file is gone (it would keep the disk
    full)."""
    frames = noise_frames(tmp_path / "frames", 300, (32, 32))
    with tmpfs(tmp_path / "small", "16k") as disk:
        (disk / "p.jsonl").write_text("old\n")
        proc = edge_calib("run", "--deploy", bundle_dir, "--input", frames, "--domain", "mnist",
                          "--headless", "--threads", "1", "--predictions", disk / "p.jsonl")
        one_error_line(proc, "No space left on device")
        assert [p.name for p in disk.iterdir()] == ["p.jsonl"]
        assert (disk / "p.jsonl").read_text() == "old\n"


def test_another_user_cannot_write_into_the_folder_one_line(trained_dtn):
    """A real second user (setpriv to nobody) exports into a folder it may read but not write:
    one line naming the folder, exit 1, and the folder stays empty (root would bypass the mode,
    so this runs as another user)."""
    import os
    import shutil
    import tempfile
    from pathlib import Path

    if os.getuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to act as another user")
    shared = Path(tempfile.mkdtemp(prefix="edge-calib-eacces-", dir="/tmp"))
    try:
        os.chmod(shared, 0o755)
        classifier = shared / "clf.pt"
        shutil.copy(trained_dtn, classifier)
        os.chmod(classifier, 0o644)
        locked = shared / "locked"
        locked.mkdir(mode=0o755)
        proc = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                               sys.executable, "-m", "edge_calib.cli", "export", "--classifier",
                               classifier, "--calibrator", "mnist=identity", "--no-auto-domain",
                               "--quiet", "--out", locked / "bundle"],
                              capture_output=True, text=True, timeout=600,
                              env=os.environ | {"HOME": str(shared)})
        if "Permission denied" in proc.stderr and "edge_calib" not in proc.stderr \
                and proc.returncode == 126:
            pytest.skip("the interpreter is not reachable by another user here")
        line = one_error_line(proc, "Permission denied")
        assert str(locked) in line
        assert list(locked.iterdir()) == []
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_an_output_whose_parent_is_a_file_is_one_line(trained_dtn, tmp_path):
    (tmp_path / "afile").write_text("mine")
    line = one_error_line(export(trained_dtn, tmp_path / "afile" / "bundle"),
                          "a file stands where a folder is needed")
    assert line.endswith(f"{tmp_path / 'afile'} (nothing was replaced)")
    assert (tmp_path / "afile").read_text() == "mine"


def test_names_of_255_bytes_work_as_outputs(bundle_dir, trained_dtn, tmp_path):
    """The longest names the file system takes (255 bytes, 2-byte characters included) as a
    bundle, a video, a predictions log and a calibrator's --out: the temporary and derived
    names (state, metrics log, .partial) are shortened to fit, deterministically."""
    from edge_calib.core.fileio import NAME_MAX, derived_path, fitting_name
    from edge_calib.train.loop import state_paths

    long = "é" * 100 + "n" * 51  # 251 bytes
    assert len((long + ".mp4").encode()) == NAME_MAX
    bundle = tmp_path / ("b" * NAME_MAX)
    assert export(trained_dtn, bundle).returncode == 0 and (bundle / "manifest.json").exists()
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(12):
        cv2.imwrite(str(frames / f"{i:03d}.png"), np.full((32, 32, 3), 20 * i, np.uint8))
    video, log = tmp_path / (long + ".mp4"), tmp_path / ("p" * 249 + ".jsonl")
    proc = edge_calib("run", "--deploy", bundle_dir, "--input", frames, "--domain", "mnist",
                      "--headless", "--threads", "1", "--output", video, "--predictions", log)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FRAME_COUNT) == 12
    assert len(log.read_text().splitlines()) == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [bundle.name, "frames", video.name, log.name])
    # derived names: within NAME_MAX, the same for the same long name, distinct for another
    state, metrics = state_paths(tmp_path / ("c" * 250 + ".calib.pt"))
    assert all(len(p.name.encode()) <= NAME_MAX for p in (state, metrics))
    assert state.name.endswith(".state.pt") and metrics.name.endswith(".metrics.jsonl")
    assert state == state_paths(tmp_path / ("c" * 250 + ".calib.pt"))[0]
    assert state != state_paths(tmp_path / ("c" * 249 + "d.calib.pt"))[0]
    assert fitting_name("short") == "short"
    assert derived_path(video, video.stem, ".partial.mp4").name.endswith(".partial.mp4")


def test_a_video_cut_short_by_a_full_disk_keeps_the_old_one(bundle_dir, tmp_path):
    """OpenCV's writer says nothing when the disk fills: the video is read back before it
    replaces the previous one. Exit 1, one line saying how many frames it holds; the old video
    byte for byte; what was written beside it as .partial.mp4; no temporary file."""
    frames = noise_frames(tmp_path / "frames", 200, (240, 320))
    with tmpfs(tmp_path / "small", "256k") as disk:
        old = b"an earlier good video"
        (disk / "v.mp4").write_bytes(old)
        proc = edge_calib("run", "--deploy", bundle_dir, "--input", frames, "--domain", "mnist",
                          "--headless", "--threads", "1", "--output", disk / "v.mp4")
        line = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error: ")]
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert len(line) == 1 and f"--output {disk / 'v.mp4'}: the video reads back with" in line[0]
        assert "of the 200 frames written (a full disk?)" in line[0]
        assert (disk / "v.mp4").read_bytes() == old
        assert sorted(p.name for p in disk.iterdir()) == ["v.mp4", "v.partial.mp4"]


def test_train_onto_a_full_disk_is_one_line(trained_dtn, shared_data, tmp_path):
    """The checkpoint is serialised in memory and then written: a full disk is the file
    system's one line (torch's zip writer used to fail mid-way with a traceback), exit 1, no
    temporary file; the epoch's metrics log is what stays."""
    with tmpfs(tmp_path / "small", "64k") as disk:
        proc = edge_calib("train", "--classifier", trained_dtn, "--source", "mnist", "--target",
                          "mnist:colour", "--domain", "c", "--epochs", 1, "--max-samples", 64,
                          "--batch-size", 32, "--out", disk / "c.calib.pt", "--data-root",
                          shared_data, "--quiet")
        lines = proc.stderr.strip().splitlines()  # the epoch's log line, then the error
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert lines[-1] == "error: train: No space left on device (nothing was replaced)"
        assert [ln for ln in lines if not ln.startswith('{"epoch"')] == lines[-1:]
        assert [p.name for p in disk.iterdir()] == ["c.calib.metrics.jsonl"]
