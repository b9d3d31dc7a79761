"""Pieces with no test of their own before: URI parsing, AdaBN by hand, eval --fused, the
atomic folder swap."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import random_classifier, random_domain

from edge_calib.cli import main
from edge_calib.core.errors import EdgeCalibError
from edge_calib.core.fileio import atomic_directory
from edge_calib.runtime.sources import parse_source


@pytest.mark.parametrize("camera,uri,kind,target", [
    (0, None, "camera", 0),
    (None, "/dev/video2", "v4l2", "/dev/video2"),
    (None, "v4l2:///dev/video1", "v4l2", "/dev/video1"),
    (None, "csi://1", "csi", 1),
    (None, "rtsp://10.0.0.5:8554/cam", "stream", "rtsp://10.0.0.5:8554/cam"),
    (None, "http://127.0.0.1:8080/video.mjpg", "stream", "http://127.0.0.1:8080/video.mjpg"),
    (None, "videotestsrc ! videoconvert ! appsink", "gstreamer",
     "videotestsrc ! videoconvert ! appsink"),
])
def test_uri_forms(camera, uri, kind, target):
    spec = parse_source(camera, uri, 640, 480, 30.0)
    assert (spec.kind, spec.target) == (kind, target)
    assert spec.live and (spec.width, spec.height, spec.fps) == (640, 480, 30.0)


def test_uri_files_folders_and_mistakes(tmp_path):
    video = tmp_path / "clip.avi"
    video.write_bytes(b"x")
    assert parse_source(None, str(video)).kind == "file"
    assert parse_source(None, f"file://{video}").kind == "file"
    assert parse_source(None, str(tmp_path), loop=True).kind == "folder"
    assert not parse_source(None, str(video)).live
    with pytest.raises(EdgeCalibError, match="exactly one of --camera N or --input URI"):
        parse_source(0, str(video))
    with pytest.raises(EdgeCalibError, match="is not a camera, stream, video file or image folder"):
        parse_source(None, str(tmp_path / "missing.mp4"))


def test_adabn_statistics_by_hand():
    from edge_calib.train.adabn import adapt_batchnorm

    clf = random_classifier("dtn")
    target = random_domain(200, seed=4, bright=60, labelled=False)
    adapted = adapt_batchnorm(clf, target, batch_size=256)  # one batch: exact statistics
    x = target.batch(np.arange(200), "cpu")
    with torch.no_grad():
        h = clf.module.conv1(x)
    assert torch.allclose(adapted.module.bn1.running_mean, h.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(adapted.module.bn1.running_var, h.var((0, 2, 3), unbiased=True),
                          rtol=1e-4)
    assert torch.equal(adapted.module.conv1.weight, clf.module.conv1.weight)
    assert adapted.fingerprint != clf.fingerprint
    assert clf.fingerprint == random_classifier("dtn").fingerprint  # the original is untouched


def test_eval_fused_equals_separate(bundle_dir, shared_data):
    results = {}
    for flag in ("--fused", "--separate"):
        r = CliRunner().invoke(main, ["eval", "--deploy", str(bundle_dir), "--domain", "usps",
                                      "--dataset", "usps", "--data-root", str(shared_data),
                                      "--json", flag])
        assert r.exit_code == 0, r.output
        results[flag] = json.loads(r.output)
    assert results["--fused"]["graph"] == "fused"
    assert results["--fused"]["accuracy"] == results["--separate"]["accuracy"]
    assert results["--fused"]["n"] == 2007


def test_atomic_directory_swap(tmp_path):
    target = tmp_path / "bundle"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("one")
    assert (target / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError):
        with atomic_directory(target, force=True) as tmp:
            (tmp / "a.txt").write_text("two, half written")
            raise RuntimeError("the build failed")
    assert (target / "a.txt").read_text() == "one"  # the old folder is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no temporary left
    with atomic_directory(target, force=True) as tmp:
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


@pytest.mark.parametrize("module,args,message", [
    ("torch", ["train-classifier", "--dataset", "mnist", "--out", "x.pt"],
     "train-classifier: this command runs on the workstation and needs torch: pip install "
     "'edge-calib[train]'"),
    ("cv2", ["run", "--deploy", "nowhere", "--camera", "0", "--domain", "a"],
     "no OpenCV is importable: pip install 'edge-calib[opencv]'"),
])
def test_missing_dependency_is_one_line(module, args, message, tmp_path):
    import subprocess
    import sys

    code = (f"import sys; sys.modules[{module!r}] = None\n"
            "from edge_calib.cli import main\nmain()")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
