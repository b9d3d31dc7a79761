"""Data-parallel training with torch.distributed, as launched by torchrun.

torchrun starts N copies of the command and sets RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous address in their environment; ``Distributed.from_environment`` joins the process
group (NCCL for CUDA, gloo for the CPU) and gives each rank its device (``cuda:LOCAL_RANK``).
Without those variables (a plain ``edge-calib train``) it is one process and every helper here
is the identity, so a one-process run is the same computation as before.

The rules the trainers follow with it:

- ``--batch-size`` is the *global* batch: each step takes the next ``B`` images of the epoch's
  seeded order and rank r trains on positions r, r + N, ... of them (``shard``, the split of
  torch's DistributedSampler), so N processes see the same batches as one;
- the trained modules are wrapped in DistributedDataParallel (gradients averaged); the frozen
  model is not wrapped;
- statistics of the whole batch (activation moments, the class marginal) are averaged over the
  ranks with an autograd all-reduce (``mean_over_ranks``), so the statistics objective is the
  one-process objective, not N smaller-batch ones;
- only rank 0 writes (states, metrics, checkpoints, progress bars); results that decide what
  happens next (a start's score, an epoch's row) are computed on rank 0 and broadcast.
"""

from __future__ import annotations

import contextlib
import os
import signal
import warnings
from dataclasses import dataclass
from typing import Callable, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from ..core.errors import EdgeCalibError

T = TypeVar("T")
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class Interrupted(EdgeCalibError):
    """A signal (Ctrl-C, or torchrun stopping its workers) ended training."""

    exit_code = 130


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job: ``rank`` of ``world_size`` (1: not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @classmethod
    def from_environment(cls, device: torch.device) -> tuple["Distributed", torch.device]:
        """Join torchrun's process group when its variables are set; returns (self, the
        device this rank trains on)."""
        if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
            return cls(), device
        missing = [v for v in LAUNCH_VARIABLES if v not in os.environ]
        if missing:
            raise EdgeCalibError(f"WORLD_SIZE is set but {', '.join(missing)} is not: launch "
                                 "with torchrun (e.g. torchrun --standalone --nproc-per-node 2 "
                                 "--no-python edge-calib train ...)")
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ["LOCAL_RANK"])
        if device.type == "cuda":
            if local >= torch.cuda.device_count():
                raise EdgeCalibError(f"rank {rank}: LOCAL_RANK {local} but this node has "
                                     f"{torch.cuda.device_count()} GPU(s); lower --nproc-per-node")
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend, rank=rank, world_size=world,
                                    device_id=device if device.type == "cuda" else None)
        return cls(rank, world, local, backend), device

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self, finished: bool = True) -> None:
        """Leave the process group. After a finished job, a barrier first: gloo's worker threads
        release a collective's tensors just after it completes, and one released during
        interpreter exit (the last all_gather_object's) aborted the process ("terminate called
        without an active exception", about one many-domains job in ten; none in 40 with the
        barrier). After an error the other ranks may be inside another collective: no barrier."""
        if self.active and dist.is_initialized():
            if finished:
                dist.barrier()
            dist.destroy_process_group()

    # -- data -------------------------------------------------------------------------------
    def per_rank(self, batch: int, what: str = "--batch-size") -> int:
        """This rank's share of a global batch (which must split evenly)."""
        if batch % self.world_size:
            raise EdgeCalibError(f"{what} {batch} is the global batch: it must be a multiple of "
                                 f"the {self.world_size} processes")
        return batch // self.world_size

    def shard(self, global_batch: np.ndarray) -> np.ndarray:
        """This rank's images of one global batch: positions rank, rank + N, ... (the split of
        torch's DistributedSampler without shuffling)."""
        if not self.active:
            return global_batch
        positions = list(DistributedSampler(range(len(global_batch)), self.world_size,
                                            self.rank, shuffle=False, drop_last=True))
        return global_batch[positions]

    # -- modules and values -----------------------------------------------------------------
    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` in DistributedDataParallel (gradients averaged over ranks), or itself."""
        if not self.active or not any(p.requires_grad for p in module.parameters()):
            return module
        device_ids = None if self.backend == "gloo" else [self.local_rank]
        # 1x1 convolutions' gradients come channels-last: DDP copies them into its buckets
        # (correct, a little slower) and would warn about it in every process
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids)

    def mean_over_ranks(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a per-rank mean over equal-sized shards, differentiable: the all-reduce's
        backward sums the ranks' gradients, which DDP's averaging then makes the one-process
        gradient."""
        if not self.active:
            return value
        return _SumOverRanks.apply(value) / self.world_size

    def average(self, values: dict[str, float]) -> dict[str, float]:
        """Logged per-step values averaged over the ranks (a non-finite value on one rank makes
        it non-finite on every rank, so all stop together with the same message)."""
        if not self.active:
            return values
        keys = list(values)  # the same order on every rank (the same code made them)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(t)
        return {k: float(v) / self.world_size for k, v in zip(keys, t.tolist())}

    def from_main(self, compute: Callable[[], T]) -> T:
        """``compute()`` on rank 0, its result given to every rank."""
        if not self.active:
            return compute()
        box = [compute() if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: T) -> list[T]:
        """Every rank's ``value``, in rank order (on every rank)."""
        if not self.active:
            return [value]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out


class _SumOverRanks(torch.autograd.Function):
    """y = sum_r x_r on every rank; dL/dx_r = sum_r' dL_r'/dy (each rank's loss uses y)."""

    @staticmethod
    def forward(ctx, x):
        y = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


@contextlib.contextmanager
def stop_on_signals(state_hint: Callable[[], str]):
    """SIGINT and SIGTERM (Ctrl-C; torchrun stopping its workers) end training with one line
    naming what was kept (``state_hint()``) instead of a traceback; the handlers are restored
    after. A collective that fails because another rank already stopped reads the same."""
    received: list[int] = []

    def handler(signum, frame):
        received.append(signum)
        raise Interrupted(f"training stopped by {signal.Signals(signum).name}: "
                          f"{state_hint()}")

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
    try:
        yield
    except dist.DistError as exc:
        why = (f"by {signal.Signals(received[0]).name}" if received
               else f"because another process of the job stopped ({str(exc).splitlines()[0][:100]})")
        raise Interrupted(f"training stopped {why}: {state_hint()}") from None
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
