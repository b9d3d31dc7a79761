"""Restarts: a few short starts of the same run from different seeds; the start whose calibrated
target images bring the frozen model's statistics closest to its source statistics (no labels)
continues to the full schedule.

Why: with the stats objective some seeds stay in a basin near the identity (on CamVid dusk one
seed of three ended at 24.8 mIoU against 43.3 for the others); by a fifth of the schedule the
statistics distance already tells the two apart (0.5 against 0.2 on the training frames).

Start i trains with seed ``seed + 1000 i`` (start 0 is the plain run) for ``restart_epochs`` of
the full cosine schedule, keeping its own state beside the output (``X.calib.restartI.state.pt``
and ``.metrics.jsonl``), so an interrupted choice resumes where it stopped. The chosen start's
state becomes the run's state (``X.calib.state.pt``); the other states are removed, their metrics
logs kept; the scores are recorded in the state, the checkpoint and the summary.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable

from ..core.progress import echo_err
from ..models.checkpoint import load_checkpoint_meta
from ..models.records import CalibratorTrainingState
from .calibrate import STATE, CalibratorTrainer
from .settings import CalibratorConfig
from .loop import state_paths

MakeTrainer = Callable[..., CalibratorTrainer]  # (config, state, metrics, check_memory=True)


def start_paths(out: Path, restart: int) -> tuple[Path, Path]:
    """State and metrics log of one start: X.calib.pt -> X.calib.restartI.state.pt/.jsonl."""
    stem = out.name[:-3] if out.name.endswith(".pt") else out.name
    return state_paths(out.with_name(f"{stem}.restart{restart}.pt"))


def training_files(out: Path, restarts: int) -> list[Path]:
    """Every state and metrics file a run with ``restarts`` starts may leave beside ``out``."""
    files = list(state_paths(out))
    for i in range(restarts if restarts > 1 else 0):
        files += start_paths(out, i)
    return files


def saved_state(path: Path) -> CalibratorTrainingState:
    """A saved state's record, read without its tensors."""
    return CalibratorTrainingState.read(load_checkpoint_meta(path, STATE), str(path))


def saved_batch(out: Path, cfg: CalibratorConfig) -> int:
    """The batch size the saved state of ``out``'s run (or of its first start, while the
    starts are being scored) was trained at; ``cfg``'s when none is saved."""
    for state in (state_paths(out)[0], start_paths(out, 0)[0]):
        if state.exists():
            return saved_state(state).batch_size
    return cfg.batch_size


def chosen_trainer(make: MakeTrainer, cfg: CalibratorConfig, out: Path, resume: bool,
                   progress: bool) -> CalibratorTrainer:
    """The trainer that continues: with one start, the plain run (resumed if asked); with
    several, the chosen start (scoring the starts first unless the choice was already made)."""
    state, metrics = state_paths(out)
    if cfg.restarts == 1 or (resume and state.exists()):
        restart = saved_state(state).restart if resume else 0
        trainer = make(dataclasses.replace(cfg, restart=restart), state, metrics)
        if resume:
            trainer.load_state()
        return trainer
    best, scores = None, []
    for i in range(cfg.restarts):
        start_state, start_metrics = start_paths(out, i)
        # the first start checks the memory (and may lower the batch); the others take its batch
        trainer = make(dataclasses.replace(cfg, restart=i), start_state, start_metrics,
                       check_memory=i == 0)
        cfg = dataclasses.replace(cfg, batch_size=trainer.cfg.batch_size)
        # an interrupted choice: only with --resume (checked before); rank 0's file decides
        if trainer.dist.from_main(start_state.exists):
            trainer.load_state()
        trainer.run(progress, until_epoch=cfg.restart_epochs)
        score = {"restart": i, "seed": trainer.cfg.run_seed, "epochs": trainer.epoch,
                 "stats_distance": trainer.unlabelled_stats_distance()}
        scores.append(score)
        if trainer.dist.is_main:
            echo_err(f"start {i + 1}/{cfg.restarts} (seed {score['seed']}): statistics distance "
                     f"{score['stats_distance']:.4f} after {trainer.epoch} epochs")
        if best is None or score["stats_distance"] < best[0]["stats_distance"]:
            best = (score, trainer)
    score, trainer = best
    if trainer.dist.is_main:
        echo_err(f"continuing start {score['restart'] + 1} (seed {score['seed']}): the lowest "
                 "statistics distance")
    trainer.restarts = scores
    trainer.save_state()
    if trainer.dist.is_main:  # the one writer; the other ranks only follow the path
        os.replace(trainer.state_path, state)
        os.replace(trainer.metrics_path, metrics)
        for i in range(cfg.restarts):
            start_paths(out, i)[0].unlink(missing_ok=True)
    trainer.state_path, trainer.metrics_path = state, metrics
    return trainer
