"""The device install: Python 3.8 syntax (JetPack 5) in the device modules, and `edge-calib run`
in a fresh virtual environment that holds only the device packages (no torch, no onnxsim)."""

import ast
import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGE = ROOT / "edge_calib"
# What `run`, `eval --deploy`, `bench`, `build-engine` and `doctor` import on a device (the CLI
# imports every command module to register it, so those must parse on 3.8 too).
DEVICE_MODULES = [
    *(PACKAGE / n for n in ("__init__.py", "cli.py", "models/__init__.py", "models/families.py")),
    *(p for d in ("core", "imaging", "deploy", "bench", "commands", "data", "engines", "runtime",
                  "profiles")
      for p in sorted((PACKAGE / d).glob("*.py"))),
]
NEWER_THAN_38 = {"removeprefix", "removesuffix", "is_relative_to", "with_stem", "cache",
                 "bit_count", "readlink"}


def test_device_modules_parse_and_run_on_python_38():
    """vermin (from the package index) finds the syntax and library features each module
    needs; our own pass catches what it cannot see through variables (str.removeprefix on a
    name, dict unions with |)."""
    pytest.importorskip("vermin")
    result = subprocess.run([sys.executable, "-c", "import sys; from vermin import main; "
                             "sys.argv[0] = 'vermin'; sys.exit(main())", "-t=3.8-", "--no-tips",
                             "--violations", *map(str, DEVICE_MODULES)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    for path in DEVICE_MODULES:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in NEWER_THAN_38:
                pytest.fail(f"{path.relative_to(ROOT)}:{node.lineno}: .{node.attr} needs "
                            "Python >= 3.9")
            if isinstance(node, (ast.BinOp, ast.AugAssign)) and isinstance(node.op, ast.BitOr):
                sides = [node.left, node.right] if isinstance(node, ast.BinOp) else \
                    [node.target, node.value]
                if any(isinstance(s, (ast.Dict, ast.DictComp)) for s in sides):
                    pytest.fail(f"{path.relative_to(ROOT)}:{node.lineno}: dict | dict needs "
                                "Python >= 3.9")
            if isinstance(node, ast.Match):
                pytest.fail(f"{path.relative_to(ROOT)}:{node.lineno}: match needs Python >= 3.10")


def _requirements(dist: str, seen: set) -> None:
    """``dist`` and everything it requires (no extras), recursively, by installed metadata."""
    name = re.sub(r"[-_.]+", "-", dist).lower()
    if name in seen:
        return
    seen.add(name)
    for requirement in md.requires(dist) or []:
        if "extra ==" in requirement:
            continue
        marker = requirement.split(";", 1)
        if len(marker) == 2 and "python_version" in marker[1] and "<" in marker[1]:
            continue
        _requirements(re.split(r"[\s<>=!~\[;(]", requirement.strip(), maxsplit=1)[0], seen)


@pytest.fixture(scope="module")
def device_env(tmp_path_factory):
    """A new virtual environment whose site-packages holds the device dependencies of
    pyproject.toml (and theirs) and this checkout, nothing else: the packages are linked from
    this environment's installs, so nothing is fetched."""
    folder = tmp_path_factory.mktemp("device-venv")
    venv.create(folder, with_pip=False)
    site = next(folder.glob("lib/python*/site-packages"))
    dists = set()
    for dist in ("numpy", "onnx", "onnxruntime", "click", "opencv-python"):
        _requirements(dist, dists)
    for dist in dists:
        files = md.distribution(dist).files or []
        tops = {f.parts[0] for f in files if f.parts and not f.parts[0].startswith("..")
                and not f.parts[0].endswith(".pth") and f.parts[0] != "__pycache__"}
        base = Path(md.distribution(dist).locate_file(""))
        for top in tops:
            if not (site / top).exists() and (base / top).exists():
                (site / top).symlink_to(base / top)
    (site / "edge_calib_checkout.pth").write_text(str(ROOT) + "\n")
    python = folder / "bin" / "python"
    assert "torch" not in dists and "onnxsim" not in dists
    return python, dists


def test_device_venv_runs_the_stream_through_the_fused_graph(device_env, bundle_dir,
                                                             domain_video, tmp_path):
    python, dists = device_env
    probe = subprocess.run([str(python), "-c", "import torch"], capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'torch'" in probe.stderr
    video, _ = domain_video
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run([str(python), "-m", "edge_calib.cli", "run", "--deploy",
                           str(bundle_dir), "--input", str(video), "--domain", "auto",
                           "--headless", "--json"], capture_output=True, text=True, env=env,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["frames"] == 120
    assert summary["stages_ms"]["network"]["count"] == 120  # the fused graph
    assert summary["stages_ms"]["calibrator"]["count"] == 0
    proc = subprocess.run([str(python), "-m", "edge_calib.cli", "train-classifier", "--dataset",
                           "mnist", "--out", str(tmp_path / "x.pt")], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 3 and "needs torch: pip install 'edge-calib[train]'" in proc.stderr
