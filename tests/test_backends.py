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
