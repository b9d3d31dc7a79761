"""A backend is one module and one ``register`` line: the CLI's --backend choices, the build
profiles and doctor's software list take it from the registry. Tried with a real second
backend (ONNX Runtime pinned to one thread) defined outside the package, in a fresh process."""

import json
import subprocess
import sys

import pytest

from edge_calib.core.errors import EdgeCalibError
from edge_calib.engines import BACKENDS, backend_named, open_engines

ONE_THREAD = '''
from edge_calib.engines.onnxruntime_backend import OrtEngines


class OneThread(OrtEngines):
    backend = "onethread"


def open_engines(bundle, threads=0, fused=True, frames=False):
    return OneThread(bundle, threads=1, fused=fused, frames=frames)


def software():
    return {"onethread": "ONNX Runtime on one thread"}
'''

DRIVER = '''
import json, sys
from edge_calib.engines import Backend, register
register(Backend("onethread", "onnxruntime", "onethread_backend"))
from edge_calib.bench.doctor import software
from edge_calib.cli import main
from edge_calib.engines.profiles import load_profile
print("SOFTWARE " + json.dumps(software()["onethread"]))
print("PROFILE " + load_profile(sys.argv[1])["backend"])
main(sys.argv[2:])
'''


def test_a_registered_backend_runs_a_bundle_and_is_listed(bundle_dir, domain_video, tmp_path):
    (tmp_path / "onethread_backend.py").write_text(ONE_THREAD)
    profile = tmp_path / "one.json"
    profile.write_text(json.dumps({"name": "one", "backend": "onethread"}))
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(profile), "run", "--deploy", str(bundle_dir),
         "--input", str(domain_video[0]), "--domain", "usps", "--backend", "onethread",
         "--headless", "--max-frames", "5", "--json"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == 'SOFTWARE "ONNX Runtime on one thread"'
    assert lines[1] == "PROFILE onethread"
    summary = json.loads(lines[-1])
    assert summary["backend"] == "onethread" and summary["frames"] == 5 and summary["error"] is None


def test_the_built_in_backends_and_an_unknown_name(bundle_dir):
    from edge_calib.deploy.bundle import open_bundle

    assert list(BACKENDS) == ["onnxruntime", "tensorrt"]
    assert backend_named("tensorrt").variant == "tensorrt"
    with pytest.raises(EdgeCalibError, match="unknown backend 'cuda'; choose one of "
                                             "onnxruntime, tensorrt"):
        open_engines(open_bundle(bundle_dir), "cuda")


SHUFFLED = '''
import numpy as np

from edge_calib.engines.onnxruntime_backend import OrtEngines


class Shuffled(OrtEngines):
    """ONNX Runtime with its classes rotated by one: a backend that disagrees."""

    backend = "shuffled"

    def infer(self, domain, x):
        logits, ms = super().infer(domain, x)
        return np.roll(logits, 1, axis=1), ms


def open_engines(bundle, threads=0, fused=True, frames=False):
    return Shuffled(bundle, threads=threads, fused=fused, frames=frames)


def prepare(deploy, settings):
    return {"built": "nothing to build", "fused": settings["fused"]}


def software():
    return {"shuffled": "ONNX Runtime, classes rotated"}
'''

DOCTOR = '''
import sys
from edge_calib.engines import Backend, register
register(Backend("onethread", "onnxruntime", "onethread_backend"))
register(Backend("shuffled", "onnxruntime", "shuffled_backend"))
from edge_calib.cli import main
main(sys.argv[1:])
'''


def test_doctor_compares_every_registered_backend_with_onnx_runtime(bundle_dir, tmp_path):
    """doctor runs each registered backend, after its ``prepare``, on the bundle's check
    images and compares it with ONNX Runtime: the one-thread copy agrees on every frame, the
    one with rotated classes is a named problem and a non-zero exit."""
    (tmp_path / "onethread_backend.py").write_text(ONE_THREAD)
    (tmp_path / "shuffled_backend.py").write_text(SHUFFLED)
    report = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-c", DOCTOR, "doctor", "--deploy", str(bundle_dir), "--report",
         str(report), "--iterations", "3"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 1, proc.stderr[-2000:]
    data = json.loads((report / "doctor.json").read_text())
    one, shuffled = data["onethread"], data["shuffled"]
    assert one["ok"] is True and one["agreement"] == {"usps": 1.0, "mnist": 1.0}
    assert one["max_abs_diff"]["usps"] < 1e-4
    assert shuffled["ok"] is False and shuffled["built"] == "nothing to build"
    assert shuffled["fused"] is True and shuffled["agreement"]["mnist"] < 0.5
    assert shuffled["latency_ms_batch1"]["mnist"]["count"] == 3
    assert data["problems"] and all(p.startswith("shuffled: domain ") for p in data["problems"])
    assert "agrees with onnxruntime on" in data["problems"][0]
    assert "## shuffled" in (report / "doctor.md").read_text()
