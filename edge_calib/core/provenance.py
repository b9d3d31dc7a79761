"""Where a result came from: the machine (CPU, cores, memory, OS, GPU, Jetson state), the
software versions and the commit. One capture for every report and benchmark record; no torch
needed (torch's threads and CUDA device are added when torch is already imported)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("numpy", "onnx", "onnxruntime", "opencv-python", "opencv-python-headless", "torch",
            "tensorrt", "pycuda", "edge-calib")


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _cpu_model() -> str:
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        if line.startswith(("model name", "Model", "Hardware")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _run(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def git_commit(root: str | Path | None = None) -> tuple[str, bool | None]:
    """(HEAD, whether edge_calib/ or benchmarks/ differ from it) of the checkout at ``root``
    (default: this package's). A copy without .git (a borrowed GPU machine) takes the commit
    from $EDGE_CALIB_COMMIT, with the dirty flag unknown."""
    root = Path(root) if root else Path(__file__).resolve().parents[2]  # the checkout
    sha = _run(["git", "-C", str(root), "rev-parse", "HEAD"])
    if not sha:
        return os.environ.get("EDGE_CALIB_COMMIT", "unknown"), None
    dirty = _run(["git", "-C", str(root), "status", "--porcelain", "edge_calib", "benchmarks"])
    return sha, bool(dirty)


def capture(threads: int | None = None) -> dict:
    mem = None
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal"):
            mem = round(int(line.split()[1]) / 2**20, 1)
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    nvcc = _run(["nvcc", "--version"])
    env = {"cpu": _cpu_model(), "cores": os.cpu_count(),
           "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
           "threads_used": threads, "memory_gib": mem, "os": platform.platform(),
           "python": platform.python_version(), "versions": versions,
           "gpu": _run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.mem",
                        "--format=csv,noheader"]),
           "cuda_toolkit": nvcc.splitlines()[-1] if nvcc else None}  # nvcc: may exist without a GPU
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        env["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            env["gpu"] = env["gpu"] or torch.cuda.get_device_name(0)
    env["commit"], env["uncommitted_changes"] = git_commit()
    model = _read("/proc/device-tree/model")
    if model and "jetson" in model.lower():  # power mode and clocks, where readable
        env["jetson"] = {"model": model.strip("\x00"), "power_mode": _run(["nvpmodel", "-q"]),
                         "gpu_freq_hz": _read("/sys/devices/gpu.0/devfreq/17000000.ga10b/cur_freq")
                         or _read("/sys/devices/17000000.gv11b/devfreq/17000000.gv11b/cur_freq"),
                         "emc_freq_hz": _read("/sys/kernel/debug/bpmp/debug/clk/emc/rate")}
    return env
