"""The one supervised training loop (source models, and fine-tuning after pruning): Adam(W)
over shuffled batches with an optional batch transform (augmentation) and hook after each step
(pruning masks), a cosine or constant schedule, and a resumable state written after every
epoch (model, optimiser, schedule, RNG, history), so a killed run continues with --resume.
Under torchrun the model is in DistributedDataParallel, ``batch_size`` is the global batch (each
rank trains on its shard) and only rank 0 evaluates, logs and writes (``distributed.py``)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..core.errors import EdgeCalibError
from ..models.checkpoint import load_checkpoint, load_checkpoint_meta, save_checkpoint
from ..models.records import SupervisedTrainingState
from .distributed import Distributed
from .loop import kept_message, log_epoch, out_of_memory_as_error
from .memory_budget import StepMemory, batch_that_fits, left_as_found, step_memory
from .loop import scheduler as lr_schedule
from .scaffold import Epochs
from .tensors import DomainData

STATE = "supervised-training-state"


@dataclass
class Fit:
    """What a loop needs besides the model and data."""

    epochs: int
    batch_size: int
    lr: float
    seed: int = 0
    weight_decay: float = 0.0
    schedule: str = "constant"  # or cosine
    label: str = "epoch"

    def validate(self):
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise EdgeCalibError(f"--lr must be a positive finite number, got {self.lr}")
        if self.epochs < 1 or self.batch_size < 1:
            raise EdgeCalibError("--epochs and --batch-size must be >= 1")


def fit(model: torch.nn.Module, data: DomainData, cfg: Fit, loss_fn: Callable, device,
        transform: Callable | None = None, after_step: Callable | None = None,
        evaluate: Callable[[int], dict] | None = None, state_path: Path | None = None,
        resume: bool = False, progress: bool = True, dist: Distributed = Distributed(),
        cap_batch: bool = False) -> list[dict]:
    """Train ``model`` in place; returns the per-epoch history (each row with the batch size it
    trained at). ``evaluate(epoch)`` may add entries to an epoch's row (computed on rank 0);
    ``state_path`` makes the run resumable; ``cap_batch`` lowers a batch whose step would not
    fit in memory to the largest that does (``memory_budget``) instead of refusing it."""
    cfg.validate()
    dist.per_rank(cfg.batch_size)
    model.to(device)
    net = dist.wrap(model)
    if len(data) < cfg.batch_size:
        raise EdgeCalibError(f"{data.name}: {len(data)} images is less than one batch of "
                             f"{cfg.batch_size}")
    if resume and cap_batch:  # a resumed run keeps the batch its state was trained at
        cfg = dataclasses.replace(cfg, batch_size=min(cfg.batch_size, _saved_batch(state_path)))
    if len(data) >= 3:
        fits = dist.world_size * batch_that_fits(
            _step_memory(model, data, loss_fn, transform, device),
            dist.per_rank(cfg.batch_size), device, dist, cap=cap_batch)
        cfg = dataclasses.replace(cfg, batch_size=min(cfg.batch_size, fits))
    steps = len(data) // cfg.batch_size
    total = steps * cfg.epochs
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = lr_schedule(optimiser, cfg.schedule, total)
    history: list[dict] = []
    if resume:
        history = _load_state(state_path, model, optimiser, scheduler)
    def kept() -> str:
        return kept_message(state_path) if state_path is not None else "nothing was written"

    def step(_, idx) -> dict:
        x, y = data.batch(idx, device), data.labels_of(idx, device)
        if transform is not None:
            x, y = transform(x, y)
        loss = loss_fn(net(x), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        scheduler.step()
        if after_step is not None:
            after_step(model)
        return {"loss": loss.item()}

    epochs = Epochs((len(data),), (cfg.seed,), cfg.batch_size, steps, cfg.epochs, cfg.label,
                    state_path, "loss", "Try a lower --lr", dist=dist)
    with out_of_memory_as_error(lambda: cfg.batch_size, kept):
        for epoch in range(len(history), cfg.epochs):
            model.train()
            means, seconds = epochs.run(epoch, step, progress, shown=("loss",))
            model.eval()
            row = {"epoch": epoch + 1, "loss": means["loss"], "lr": scheduler.get_last_lr()[0],
                   "time_s": seconds, "batch_size": cfg.batch_size,
                   "world_size": dist.world_size}
            if evaluate is not None:
                row |= dist.from_main(lambda: evaluate(epoch + 1))
            history.append(row)
            if dist.is_main:
                log_epoch(row)
            if state_path is not None and dist.is_main:
                _save_state(state_path, model, optimiser, scheduler, history, cfg)
    return history


def _step_memory(model, data: DomainData, loss_fn, transform, device) -> StepMemory:
    """A step's memory from the forward and loss on the first two and four training images
    (BatchNorm needs two), transformed as in training (crops change the size), in training
    mode; the random state and the BatchNorm statistics are put back, so the run is the same as
    without the check."""
    def forward_on(n: int) -> torch.Tensor:
        idx = np.arange(n)
        x, y = data.batch(idx, device), data.labels_of(idx, device)
        if transform is not None:
            x, y = transform(x, y)
        return loss_fn(model(x), y)

    model.train()
    with left_as_found([model], device):
        return step_memory(forward_on, list(model.parameters()), (2, min(4, len(data))), device)


def _save_state(path, model, optimiser, scheduler, history, cfg):
    tensors = {"model": model.state_dict(), "optimiser": optimiser.state_dict(),
               "scheduler": scheduler.state_dict(), "rng_cpu": torch.get_rng_state()}
    state = SupervisedTrainingState(history=history, fit=dataclasses.asdict(cfg))
    save_checkpoint(path, STATE, state.to_dict(), tensors)


def _saved_batch(path) -> int:
    """The batch size a saved training state was trained at."""
    if path is None or not Path(path).exists():
        raise EdgeCalibError(f"--resume: no training state at {path}")
    return SupervisedTrainingState.read(load_checkpoint_meta(path, STATE), str(path)).batch_size


def _load_state(path, model, optimiser, scheduler) -> list[dict]:
    if path is None or not Path(path).exists():
        raise EdgeCalibError(f"--resume: no training state at {path}")
    meta, t = load_checkpoint(path, STATE)
    state = SupervisedTrainingState.read(meta, str(path))
    try:
        model.load_state_dict(t["model"])
        optimiser.load_state_dict(t["optimiser"])
        scheduler.load_state_dict(t["scheduler"])
        torch.set_rng_state(t["rng_cpu"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise EdgeCalibError(f"cannot resume {path}: it is from another model or run "
                             f"({str(exc).splitlines()[0][:120]})") from None
    return state.history


def class_weights(labels: np.ndarray, classes: int, ignore: int | None = None) -> torch.Tensor:
    """ENet's class weighting for imbalanced segmentation: w_c = 1 / ln(1.02 + p_c), p_c the
    share of class c among the labelled training pixels."""
    values = labels.ravel()
    if ignore is not None:
        values = values[values != ignore]
    p = np.bincount(values, minlength=classes)[:classes] / max(1, values.size)
    return torch.tensor(1.0 / np.log(1.02 + p), dtype=torch.float32)
