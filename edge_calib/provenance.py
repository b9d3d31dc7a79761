"""The machine a report was measured on: CPU, cores, memory, OS, versions, GPU, Jetson state."""

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
    model = _read("/proc/device-tree/model")
    if model and "jetson" in model.lower():  # power mode and clocks, where readable
        env["jetson"] = {"model": model.strip("\x00"), "power_mode": _run(["nvpmodel", "-q"]),
                         "gpu_freq_hz": _read("/sys/devices/gpu.0/devfreq/17000000.ga10b/cur_freq")
                         or _read("/sys/devices/17000000.gv11b/devfreq/17000000.gv11b/cur_freq"),
                         "emc_freq_hz": _read("/sys/kernel/debug/bpmp/debug/clk/emc/rate")}
    return env
