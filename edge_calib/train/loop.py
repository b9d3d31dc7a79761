"""What every training loop here shares (the supervised loop and the calibrator trainer): the
learning-rate schedule, the state and metrics files beside the output and the rule for reusing
them, the stop on a non-finite loss, and the per-epoch log line."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Callable, Iterable

import torch

from ..core.errors import EdgeCalibError
from ..core.fileio import derived_path, write_bytes_atomic
from ..core.progress import echo_err
from .settings import SCHEDULES



def scheduler(optimiser: torch.optim.Optimizer, schedule: str, total_steps: int
              ) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step multiplier of the base learning rate: cosine 0.5 (1 + cos(pi min(t, T) / T))
    over the T = ``total_steps`` of the run, or constant 1."""
    if schedule not in SCHEDULES:
        raise EdgeCalibError(f"unknown --schedule {schedule!r}; choose {SCHEDULES}")
    decay: Callable[[int], float] = (
        (lambda t: 0.5 * (1 + math.cos(math.pi * min(t, total_steps) / total_steps)))
        if schedule == "cosine" else (lambda t: 1.0))
    return torch.optim.lr_scheduler.LambdaLR(optimiser, decay)


def state_paths(out: str | Path) -> tuple[Path, Path]:
    """Training state and metrics log beside the output: X.pt -> X.state.pt, X.metrics.jsonl."""
    out = Path(out)
    stem = out.name[:-3] if out.name.endswith(".pt") else out.name
    return derived_path(out, stem, ".state.pt"), derived_path(out, stem, ".metrics.jsonl")


def check_states(states: Iterable[Path], resume: bool, force: bool) -> None:
    """A saved state is continued only with --resume and discarded only with --force; --resume
    needs one."""
    states = list(states)
    existing = [s for s in states if s.exists()]
    if existing and not (resume or force):
        raise EdgeCalibError(f"a training state exists at {existing[0]}: pass --resume to "
                             "continue or --force to start over")
    if resume and not existing:
        raise EdgeCalibError(f"--resume: no training state at {states[0]}")


def non_finite(epoch: int, step: int, what: str, values: str, state_path: Path | None,
               advice: str, written: str = "") -> EdgeCalibError:
    """The stop on a non-finite loss (it would poison the weights and every later epoch),
    naming what was kept: ``epoch`` is the number of finished epochs."""
    kept = (f"the last good state (epoch {epoch}) is kept in {state_path}{written}"
            if state_path is not None and epoch else "nothing was written")
    return EdgeCalibError(f"training stopped at epoch {epoch + 1}, step {step + 1}: the {what} "
                          f"became non-finite ({values}); {kept}. {advice}")


def kept_message(state_path: Path) -> str:
    """What an interrupted run leaves, for its one-line message (the state on disk is rank 0's,
    which under torchrun may be an epoch behind the rank that reports it)."""
    if Path(state_path).exists():
        return f"the last finished epoch's state is kept in {state_path}; continue with --resume"
    return "no epoch had finished, nothing was written"


@contextlib.contextmanager
def out_of_memory_as_error(batch_size: Callable[[], int], kept: Callable[[], str]):
    """A training step that runs out of memory (torch's allocator refusing, CUDA out of memory,
    MemoryError) ends in one line naming the batch size to try (half of ``batch_size()``, the
    batch it trained at) and what was kept, not a traceback. The kernel's OOM killer cannot be caught: where memory is overcommitted a
    process can still be killed before any allocation fails."""
    try:
        yield
    except (MemoryError, RuntimeError) as exc:
        text = str(exc)
        if isinstance(exc, RuntimeError) and "DefaultCPUAllocator" not in text \
                and "out of memory" not in text.lower():
            raise
        batch = batch_size()
        raise EdgeCalibError(f"out of memory training at --batch-size {batch}: try "
                             f"--batch-size {max(1, batch // 2)}; {kept()}") from None


def log_epoch(row: dict, history: list[dict] | None = None,
              metrics_path: Path | None = None) -> None:
    """One JSON line per epoch on stderr; with ``metrics_path`` the whole history is rewritten
    there atomically (a killed run never leaves half a line)."""
    if metrics_path is not None:
        write_bytes_atomic(metrics_path, "".join(json.dumps(h) + "\n" for h in history).encode())
    echo_err(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))
