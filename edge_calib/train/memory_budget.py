"""Whether a training step fits in memory, checked before the first step: the kernel's OOM
killer ends a process that overcommits with exit 137 and no message, so a batch that cannot fit
is refused in one line naming the batch size that does (or, left at its default, lowered to it).

The estimate of one step at batch B on one process:

    need(B) = fixed + 3 * trainable_bytes + SLACK + GROWTH * B * per_sample

``fixed`` and ``per_sample`` come from two real forward passes at small batches, counting
every tensor autograd saves for backward (``torch.autograd.graph.saved_tensors_hooks``, each
storage once), at two sizes a < b: per_sample = (saved(b) - saved(a)) / (b - a), fixed =
saved(a) - a * per_sample. The 3 x trainable bytes are the gradients and Adam's two moments. During backward each activation's gradient is
held beside what is still saved (``GROWTH``), and the allocator and the math libraries keep
workspaces of their own (``SLACK``). Against the peak resident memory of two real steps
(``benchmarks/train_memory.py``, 2-core Xeon) the estimate is 1.3-1.5 times what was used where
memory matters (LR-ASPP at 288x384, batches 8 and 16; the DTN and the imported ONNX-zoo mnist-8
at batch 1024), more at small batches, where SLACK dominates."""

from __future__ import annotations

import contextlib
import os
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..core.errors import EdgeCalibError

BUDGET_VARIABLE = "EDGE_CALIB_TRAIN_MEMORY"
GROWTH = 1.5
SLACK = 256 << 20


@dataclass(frozen=True)
class StepMemory:
    """One training step's estimated memory: ``fixed`` + ``per_sample`` x batch bytes."""

    fixed: int
    per_sample: int

    def need(self, batch: int) -> int:
        return int(self.fixed + SLACK + GROWTH * self.per_sample * batch)

    def largest_batch(self, budget: int) -> int:
        """The largest batch whose need fits ``budget`` (0 when even one sample does not)."""
        room = budget - self.fixed - SLACK
        return max(0, int(room // max(GROWTH * self.per_sample, 1)))


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


def step_memory(forward_on: Callable[[int], torch.Tensor], trainable: list[torch.nn.Parameter],
                sizes: tuple[int, int] = (1, 2)) -> StepMemory:
    """The estimate from two forward passes: ``forward_on(n)`` runs the step's forward on n
    samples (the two ``sizes``) and returns its loss (or any tensor whose backward the step
    runs)."""
    small, large = sizes
    at_small = saved_bytes(lambda: forward_on(small))
    at_large = saved_bytes(lambda: forward_on(large))
    per_sample = max(at_large - at_small, 0) // (large - small)
    optimiser = 3 * sum(p.numel() * p.element_size() for p in trainable if p.requires_grad)
    return StepMemory(fixed=max(at_small - small * per_sample, 0) + optimiser,
                      per_sample=per_sample)


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
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return soft - int(line.split()[1]) * 1024
    except OSError:
        pass
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
