"""A calibrator training job: one domain or many, in one process or under torchrun.

- One domain: the usual run; under torchrun its batches are split over the ranks (DDP) and rank
  0 writes the one checkpoint.
- Several domains (``--target``/``--domain`` pairs): one calibrator per domain, sharing the
  frozen model and the source images, each written to ``OUT/DOMAIN.calib.pt`` as soon as it is
  done; under torchrun the domains are dealt to the ranks (rank r trains domains r, r + N, ...),
  each rank training its own in one process. A domain that fails (a bad folder, a diverging
  loss) is reported in one line and the others still finish; the job then exits non-zero.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import EdgeCalibError
from ..core.names import check_domain_name
from ..core.progress import echo_err
from .distributed import Distributed, Interrupted, stop_on_signals


@dataclass(frozen=True)
class DomainTask:
    """One calibrator to train: the domain's name, its unlabelled target images, the output."""

    domain: str
    target: str
    out: Path


@dataclass
class SharedInputs:
    """What every domain of a job shares: the frozen model, the source images (training and the
    labelled source monitor) and the settings."""

    classifier_path: str
    classifier: object
    source: str
    source_images: object
    source_test: object
    source_split: str
    spec: object
    data_root: str | None
    max_samples: int | None
    seed: int
    monitor_test: bool
    cap_batch: bool = False  # --batch-size left at its default: capped to what memory holds


def plan(targets: tuple[str, ...], domains: tuple[str, ...], out: str) -> list[DomainTask]:
    """The job's domains: one --domain per --target, in order. One domain writes ``out``;
    several write ``out/DOMAIN.calib.pt`` (``out`` is then a folder)."""
    if len(targets) != len(domains):
        raise EdgeCalibError(f"give one --domain per --target ({len(targets)} --target, "
                             f"{len(domains)} --domain)")
    for name in domains:
        check_domain_name(name, "--domain")
    repeated = sorted({d for d in domains if domains.count(d) > 1})
    if repeated:
        raise EdgeCalibError(f"--domain {repeated[0]} is given twice: one calibrator per domain")
    if len(domains) == 1:
        if Path(out).is_dir():
            raise EdgeCalibError(f"--out {out} is a folder: give the calibrator's file name "
                                 "(a folder is for several domains)")
        return [DomainTask(domains[0], targets[0], Path(out))]
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise EdgeCalibError(f"--out {out}: with several domains --out is a folder (each domain "
                             "is written to OUT/DOMAIN.calib.pt), and this is a file")
    return [DomainTask(d, t, folder / f"{d}.calib.pt") for d, t in zip(domains, targets)]


def check_states(tasks: list[DomainTask], restarts: int, resume: bool, force: bool) -> None:
    """Every domain's saved state is continued only with --resume and replaced only with
    --force (checked before anything is loaded)."""
    from .loop import check_states as check
    from .restarts import training_files

    for task in tasks:
        check([f for f in training_files(task.out, restarts) if f.name.endswith(".state.pt")],
              resume, force)


def train_domain(task: DomainTask, cfg, shared: SharedInputs, device, dist: Distributed,
                 resume: bool, force: bool, progress: bool) -> dict:
    """Train, select and (rank 0) write one domain's calibrator; returns its JSON summary."""
    from ..models.records import CalibratorRecord
    from ..models.store import save_calibrator
    from .calibrate import CalibratorTrainer
    from .evaluate import check_task
    from .loop import kept_message, out_of_memory_as_error, state_paths
    from .restarts import chosen_trainer, saved_batch, training_files
    from .tensors import load_domain

    target = load_domain(task.target, "train", shared.data_root, shared.spec, shared.max_samples,
                         shared.seed, unlabelled=True)
    monitor = (load_domain(task.target, "test", shared.data_root, shared.spec)
               if shared.monitor_test else None)
    if monitor is not None:
        check_task(shared.classifier.task, monitor)
    if force and not resume and dist.is_main:  # no other rank reads a state without --resume
        for f in training_files(task.out, cfg.restarts):
            f.unlink(missing_ok=True)
    trainers: list = []

    def make_trainer(config, state, metrics, check_memory=True):
        trainers.append(CalibratorTrainer(
            shared.classifier, shared.source_images, target, config, device, state, metrics,
            source_test=shared.source_test, source_split=shared.source_split, monitor=monitor,
            dist=dist, cap_batch=shared.cap_batch, check_memory=check_memory))
        return trainers[-1]

    def kept() -> str:
        return kept_message(trainers[-1].state_path if trainers else state_paths(task.out)[0])

    def batch() -> int:
        return trainers[-1].batch if trainers else cfg.batch_size

    if resume and shared.cap_batch:  # a resumed run keeps the batch its state was trained at
        cfg = dataclasses.replace(cfg, batch_size=saved_batch(task.out, cfg))
    with stop_on_signals(kept), out_of_memory_as_error(batch, kept):
        trainer = chosen_trainer(make_trainer, cfg, task.out, resume, progress=progress)
        module, summary = trainer.run(progress=progress)
    result = {"out": str(task.out), "domain": task.domain, "epochs": summary.epochs,
              "selection": summary.selection, "restarts": summary.restarts,
              "world_size": dist.world_size, "classifier_fingerprint": trainer.fingerprint}
    if dist.is_main:
        record = CalibratorRecord(domain=task.domain, classifier_fingerprint=trainer.fingerprint,
                                  classifier_path=shared.classifier_path,
                                  input_spec=shared.classifier.spec, source=shared.source,
                                  target=task.target, max_samples=shared.max_samples,
                                  config=dataclasses.asdict(trainer.cfg), training=summary)
        saved = save_calibrator(task.out, module, record)
        result |= {"fingerprint": saved.fingerprint, "params": saved.params}
    return result


def train_domains(tasks: list[DomainTask], cfg, shared: SharedInputs, device, dist: Distributed,
                  resume: bool, force: bool, progress: bool) -> list[dict]:
    """Every domain of the job, dealt to the ranks; returns every domain's summary (or
    ``{"domain", "error"}``) in the order given, on every rank."""
    if len(tasks) == 1:
        return [train_domain(tasks[0], cfg, shared, device, dist, resume, force, progress)]
    tasks[0].out.parent.mkdir(parents=True, exist_ok=True)
    mine = tasks[dist.rank::dist.world_size]
    results = {}
    for k, task in enumerate(mine, 1):
        where = f" on rank {dist.rank}" if dist.active else ""
        echo_err(f"domain {task.domain} ({k}/{len(mine)}{where}): {task.target} -> {task.out}")
        try:
            results[task.domain] = train_domain(task, cfg, shared, device, Distributed(), resume,
                                                force, progress and dist.is_main)
        except Interrupted:
            raise
        except Exception as exc:  # one domain's failure must not lose the others
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if not isinstance(exc, EdgeCalibError):
                message = f"{type(exc).__name__}: {message}"
            echo_err(f"error: domain {task.domain}: {message}")
            results[task.domain] = {"out": str(task.out), "domain": task.domain,
                                    "error": message}
    merged = {k: v for part in dist.gather(results) for k, v in part.items()}
    return [merged[t.domain] for t in tasks]
