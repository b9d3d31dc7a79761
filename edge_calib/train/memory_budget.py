"""Whether a training step fits in memory, checked before the first step: the kernel's OOM
killer ends a process that overcommits with exit 137 and no message, so a batch that cannot fit
is refused in one line naming the batch size that does (or, left at its default, lowered to it).

The estimate of one step at batch B on one process:

    need(B) = fixed + 3 * trainable_bytes + SLACK + B * per_sample
    per_sample = max(GROWTH * saved, MARGIN * peak)

both read from real forward passes at two small batches a < b (the line through them gives the
per-sample and the fixed part):

- ``saved``: every tensor autograd keeps for backward (``torch.autograd.graph.saved_tensors_
  hooks``, each storage once). During backward each activation's gradient is held beside what
  is still saved: ``GROWTH``.
- ``peak``: the memory the forward and its backward really add at their peak: the allocator's
  peak on CUDA, the resident high-water mark on Linux (VmHWM, reset through
  /proc/self/clear_refs). It sees what saved tensors miss: a statically quantised (QDQ)
  MobileNetV2 saves 55 MiB per 224x224 image but peaks at 136 MiB. ``MARGIN`` covers
  the noise of reading it.

The 3 x trainable bytes are the gradients and Adam's two moments; the allocator and the math
libraries keep workspaces of their own (``SLACK``). Against the peak resident memory of real
training (``benchmarks/train_memory.py`` and ``benchmarks/large_import.py``, 2-core Xeon) see
RESULTS.md, "A training step's memory"."""

from __future__ import annotations

import contextlib
import os
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..core.errors import EdgeCalibError
from ..core.memory import return_freed_memory

BUDGET_VARIABLE = "EDGE_CALIB_TRAIN_MEMORY"
GROWTH = 1.5
MARGIN = 1.2
SLACK = 256 << 20


@dataclass(frozen=True)
class StepMemory:
    """One training step's estimated memory: ``fixed`` + SLACK + ``per_sample`` x batch bytes
    (``per_sample`` with its GROWTH or MARGIN applied)."""

    fixed: int
    per_sample: int

    def need(self, batch: int) -> int:
        return self.fixed + SLACK + self.per_sample * batch

    def largest_batch(self, budget: int) -> int:
        """The largest batch whose need fits ``budget`` (0 when even one sample does not)."""
        room = budget - self.fixed - SLACK
        return max(0, room // max(self.per_sample, 1))


def saved_bytes(forward: Callable[[], torch.Tensor]) -> int:
    """Bytes autograd keeps for the backward of ``forward()``'s result, each storage once; the
    graph is dropped afterwards."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor):
        if tensor.layout == torch.strided and tensor.device.type != "meta":
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = forward()
    del result
    return sum(storages.values())


def peak_bytes(forward: Callable[[], torch.Tensor], device: torch.device | str) -> int | None:
    """Memory added at the peak while ``forward()`` and its backward run: the allocator's peak
    on CUDA, the resident high-water mark on Linux; None where neither can be read."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        forward().backward()
        return torch.cuda.max_memory_allocated(device) - before
    try:
        return_freed_memory()
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        before = _status_bytes("VmRSS")
        forward().backward()
        return _status_bytes("VmHWM") - before
    except (OSError, KeyError, ValueError):
        return None


def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _line(at_small: int, at_large: int, small: int, large: int) -> tuple[int, int]:
    """(fixed, per_sample) of the line through two measurements."""
    per_sample = max(at_large - at_small, 0) // (large - small)
    return max(at_small - small * per_sample, 0), per_sample


def step_memory(forward_on: Callable[[int], torch.Tensor], trainable: list[torch.nn.Parameter],
                sizes: tuple[int, int] = (1, 2), device: torch.device | str = "cpu",
                measure_peak: bool = True) -> StepMemory:
    """The estimate from forward passes at the two ``sizes``: ``forward_on(n)`` runs the
    step's forward on n samples and returns its loss (or any tensor whose backward the step
    runs). With ``measure_peak`` the backward runs too (the gradients it leaves on
    ``trainable`` are cleared)."""
    small, large = sizes
    fixed, saved = _line(saved_bytes(lambda: forward_on(small)),
                         saved_bytes(lambda: forward_on(large)), small, large)
    per_sample = int(GROWTH * saved)
    if measure_peak:
        peaks = [peak_bytes(lambda: forward_on(n), device) for n in sizes]
        for p in trainable:
            p.grad = None
        if None not in peaks:
            peak_fixed, peak = _line(*peaks, small, large)
            per_sample, fixed = max(per_sample, int(MARGIN * peak)), max(fixed, peak_fixed)
    optimiser = 3 * sum(p.numel() * p.element_size() for p in trainable if p.requires_grad)
    return StepMemory(fixed=fixed + optimiser, per_sample=per_sample)


@contextlib.contextmanager
def left_as_found(modules: list[torch.nn.Module], device: torch.device):
    """Measure without a trace: the random state and the modules' buffers (BatchNorm
    statistics) are put back afterwards, so training runs as it would without the check."""
    buffers = [(b, b.clone()) for m in modules for b in m.buffers()]
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield
    with torch.no_grad():
        for buffer, saved in buffers:
            buffer.copy_(saved)


def available_bytes(device: torch.device | str) -> tuple[int, str]:
    """(bytes this process may still allocate, where that figure came from): $EDGE_CALIB_TRAIN_
    MEMORY when set; on CUDA the device's free memory; on the CPU the smallest of the kernel's
    MemAvailable, the cgroup's room (memory.max - memory.current) and the address space left
    under RLIMIT_AS (``ulimit -v``), shared by the processes torchrun started on this
    machine."""
    device = torch.device(device)  # callers may pass "cpu"
    value = os.environ.get(BUDGET_VARIABLE)
    if value is not None:
        if not value.isdigit() or int(value) <= 0:
            raise EdgeCalibError(f"${BUDGET_VARIABLE}={value!r}: give a positive number of bytes")
        return int(value), f"${BUDGET_VARIABLE}"
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0], f"free memory on {device}"
    room, source = _mem_available(), "available memory"
    for other, what in ((_cgroup_room(), "room left under this cgroup's memory.max"),
                        (_address_space_room(), "address space left under ulimit -v")):
        if other is not None and other < room:
            room, source = other, what
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return room // max(processes, 1), source


def _mem_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62  # unknown: do not refuse


def _address_space_room() -> int | None:
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        return soft - _status_bytes("VmSize")
    except (OSError, KeyError, ValueError):
        return None


def _cgroup_room() -> int | None:
    base = Path("/sys/fs/cgroup")
    try:
        limit = (base / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((base / "memory.current").read_text())
    except (OSError, ValueError):
        return None


def batch_that_fits(memory: StepMemory, batch: int, device: torch.device | str, dist=None,
                    cap: bool = False, scale: int = 1) -> int:
    """The per-process batch to train at: ``batch`` when its estimated step fits in what
    ``device`` has left; else, with ``cap`` (the user left --batch-size at its default), the
    largest that fits, said on stderr; else an error naming it. ``scale`` converts the batch
    to images per step (a calibrator step runs a batch of source and one of target images: 2).
    Under torchrun every rank takes the smallest rank's answer, so all decide alike."""
    from ..core.progress import echo_err

    budget, source = available_bytes(device)
    fits = memory.largest_batch(budget) // scale
    if dist is not None and dist.active:
        fits = min(dist.gather(fits))
    if batch <= fits:
        return batch
    need = (f"--batch-size {batch} needs about {_gib(memory.need(batch * scale))} "
            f"({_gib(memory.per_sample)} per image), {_gib(budget)} is left ({source})")
    if fits < 1:
        raise EdgeCalibError(f"training at {need}: even --batch-size 1 does not fit: train at "
                             "a smaller input size or on a machine with more memory")
    if not cap:
        raise EdgeCalibError(f"training at {need}: try --batch-size {fits}")
    if dist is None or dist.is_main:
        echo_err(f"note: the default {need}; training at --batch-size {fits} (the largest that "
                 "fits; give --batch-size to choose)")
    return fits


def _gib(n: int) -> str:
    if n >= 1 << 30:
        return f"{n / (1 << 30):.2f} GiB"
    return f"{n / (1 << 20):.0f} MiB" if n >= 1 << 20 else f"{n / (1 << 10):.0f} KiB"
