"""Adversarial training of a data calibrator against a frozen classifier.

Per batch pair (x_s source, x_t target): ``d_steps`` discriminator steps on the four groups
(eq. 5, 6), then one calibrator step (eq. 7). Only the calibrator and the discriminators learn;
the classifier's fingerprint is checked after every epoch and any change is an error.

Checkpointing: the whole training state (networks, optimisers, schedule, EMA, RNG states,
history) is written atomically after every epoch; ``resume`` continues bit-for-bit.
Model selection never looks at target labels: the default is the last epoch; ``entropy``
picks the epoch with the lowest mean prediction entropy on a held-out slice of the
*unlabelled* target training images.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import EdgeCalibError
from ..fileio import write_bytes_atomic
from ..models.calibrators import DEFAULT_ARCH, calibrator_class
from ..models.checkpoint import load_checkpoint, save_checkpoint
from ..models.discriminators import FeatureDiscriminator, PixelDiscriminator
from ..models.store import Classifier, build_calibrator
from ..progress import echo_err, progress_bar
from .evaluate import scores
from .frozen import MODES, FrozenForward
from .losses import (
    CalibratorAdversarialLoss,
    GroupDiscriminatorLoss,
    PixelHistogramLoss,
    SourceConsistencyLoss,
    prediction_entropy,
)
from .tensors import DomainData, epoch_order

SELECTIONS = ("last", "entropy")
SCORE = {"classification": "accuracy", "segmentation": "miou"}  # per-epoch monitor scores
SCHEDULES = ("constant", "cosine")
STATE = "calibrator-training-state"


@dataclass
class CalibratorConfig:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-4
    d_lr: float = 1e-4
    beta1: float = 0.5
    eps: float = 0.5
    arch: str = DEFAULT_ARCH
    size: dict = field(default_factory=dict)  # the family's size settings (defaults filled in)
    perturbation: str = "symmetric"
    patch: int = 8
    w_target: float = 1.0
    w_source: float = 0.1
    w_pixel: float = 1.0
    w_feature: float = 1.0
    w_consistency: float = 0.0
    w_histogram: float = 0.0
    classifier_mode: str = "eval"
    d_steps: int = 1
    ema: float = 0.99
    schedule: str = "cosine"
    select: str = "last"
    holdout: float = 0.0
    seed: int = 0
    train_size: tuple[int, int] | None = None  # images resized to (h, w) for training

    def validate(self):
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise EdgeCalibError(f"--eps must be a positive finite number, got {self.eps}")
        for name in ("lr", "d_lr"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise EdgeCalibError(f"--{name.replace('_', '-')} must be a positive finite "
                                     f"number, got {value}")
        for name in ("w_target", "w_source", "w_pixel", "w_feature", "w_consistency",
                     "w_histogram"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise EdgeCalibError(f"--{name.replace('_', '-')} must be a finite number >= 0, "
                                     f"got {value}")
        if self.epochs < 1 or self.batch_size < 1 or self.d_steps < 1:
            raise EdgeCalibError("--epochs, --batch-size and --d-steps must be >= 1")
        self.size = calibrator_class(self.arch).check_size(self.size)
        if not 0 <= self.ema < 1:
            raise EdgeCalibError(f"--ema must be in [0, 1), got {self.ema}")
        if self.classifier_mode not in MODES:
            raise EdgeCalibError(f"unknown --classifier-mode {self.classifier_mode!r}")
        if self.schedule not in SCHEDULES:
            raise EdgeCalibError(f"unknown --schedule {self.schedule!r}; choose {SCHEDULES}")
        if self.select not in SELECTIONS:
            raise EdgeCalibError(f"unknown --select {self.select!r}; choose {SELECTIONS}")
        if self.select == "entropy" and self.holdout <= 0:
            raise EdgeCalibError("--select entropy needs --holdout > 0 (a held-out slice of the "
                                 "unlabelled target training images)")

    def calibrator_config(self) -> dict:
        return {"arch": self.arch, **self.size, "eps": self.eps, "perturbation": self.perturbation}

    def resumable_from(self, other: dict) -> list[str]:
        """Names of settings that differ from a saved run (epochs may grow unless cosine)."""
        mine = json.loads(json.dumps(dataclasses.asdict(self)))  # as saved (tuples are lists)
        other = {"w_consistency": 0.0, "w_histogram": 0.0} | other  # saved before they existed
        if "arch" not in other:  # saved before there were several calibrator families
            other = other | {"arch": "resnet", "size": {"width": other.get("width"),
                                                        "blocks": other.get("blocks")}}
        diffs = [k for k in mine if k != "epochs" and other.get(k) != mine[k]]
        if self.schedule == "cosine" and other.get("epochs") != self.epochs:
            diffs.append("epochs (the cosine schedule depends on it)")
        return diffs


def state_paths(out: Path) -> tuple[Path, Path]:
    """Training state and metrics log beside the output: X.calib.pt -> X.calib.state.pt/.jsonl."""
    stem = out.name[:-3] if out.name.endswith(".pt") else out.name
    return out.with_name(stem + ".state.pt"), out.with_name(stem + ".metrics.jsonl")


class CalibratorTrainer:
    def __init__(self, classifier: Classifier, source: DomainData, target: DomainData,
                 config: CalibratorConfig, device: torch.device, state_path: Path,
                 metrics_path: Path, source_test: DomainData | None = None,
                 source_split: str = "test",
                 monitor: DomainData | None = None):
        config.validate()
        self.cfg, self.device = config, device
        self.classifier = classifier
        self.task = classifier.task
        self.fingerprint = classifier.fingerprint
        self.frozen = FrozenForward(classifier.module.to(device), config.classifier_mode)
        self.source = source
        self.target, self.holdout = target.split(config.holdout, config.seed)
        self.source_test, self.source_split = source_test, source_split  # labelled source
        self.monitor = monitor
        self.state_path, self.metrics_path = state_path, metrics_path
        torch.manual_seed(config.seed)
        spec = classifier.spec
        self.G = build_calibrator(config.calibrator_config(), spec).to(device)
        self.G_ema = copy.deepcopy(self.G).requires_grad_(False) if config.ema > 0 else None
        self.D_pix = PixelDiscriminator(spec.channels, config.patch).to(device)
        self.D_feat = FeatureDiscriminator(classifier.num_classes).to(device)
        betas = (config.beta1, 0.999)
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=config.lr, betas=betas)
        self.opt_D = torch.optim.Adam(list(self.D_pix.parameters()) + list(self.D_feat.parameters()),
                                      lr=config.d_lr, betas=betas)
        # One epoch = one pass over the smaller domain (as zip(source_loader, target_loader)
        # in the reference code); each domain is drawn without replacement in its own order.
        self.batch = min(config.batch_size, len(self.target), len(self.source))
        self.steps = max(1, min(len(self.target), len(self.source)) // self.batch)
        total = self.steps * config.epochs
        decay = (lambda t: 0.5 * (1 + math.cos(math.pi * min(t, total) / total))) \
            if config.schedule == "cosine" else (lambda t: 1.0)
        self.sched_G = torch.optim.lr_scheduler.LambdaLR(self.opt_G, decay)
        self.sched_D = torch.optim.lr_scheduler.LambdaLR(self.opt_D, decay)
        self.loss_D, self.loss_G = GroupDiscriminatorLoss(), CalibratorAdversarialLoss(
            config.w_target, config.w_source, config.w_pixel, config.w_feature)
        self.loss_consistency, self.loss_histogram = SourceConsistencyLoss(), PixelHistogramLoss()
        self.epoch, self.history = 0, []
        self._logit_cache: dict[str, torch.Tensor] = {}
        self.best = None  # (score, epoch, state) for entropy selection

    # -- the calibrator used for evaluation and output --------------------------------------
    @property
    def deployed_G(self):
        return self.G_ema if self.G_ema is not None else self.G

    # -- state ------------------------------------------------------------------------------
    def save_state(self):
        tensors = {"G": self.G.state_dict(), "D_pix": self.D_pix.state_dict(),
                   "D_feat": self.D_feat.state_dict(), "opt_G": self.opt_G.state_dict(),
                   "opt_D": self.opt_D.state_dict(), "sched_G": self.sched_G.state_dict(),
                   "sched_D": self.sched_D.state_dict(), "rng_cpu": torch.get_rng_state()}
        if self.G_ema is not None:
            tensors["G_ema"] = self.G_ema.state_dict()
        if self.device.type == "cuda":
            tensors["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        if self.best is not None:
            tensors["best_G"] = self.best[2]
        meta = {"config": dataclasses.asdict(self.cfg), "epoch": self.epoch,
                "history": self.history, "classifier_fingerprint": self.fingerprint,
                "best": None if self.best is None else list(self.best[:2])}
        save_checkpoint(self.state_path, STATE, meta, tensors)

    def load_state(self):
        meta, t = load_checkpoint(self.state_path, STATE)
        diffs = self.cfg.resumable_from(meta["config"])
        if diffs:
            raise EdgeCalibError(f"cannot resume {self.state_path}: settings differ from the saved "
                                 f"run ({', '.join(diffs)})")
        if meta["classifier_fingerprint"] != self.fingerprint:
            raise EdgeCalibError(f"cannot resume {self.state_path}: it was trained against "
                                 f"classifier {meta['classifier_fingerprint']}, not {self.fingerprint}")
        self.G.load_state_dict(t["G"])
        self.D_pix.load_state_dict(t["D_pix"])
        self.D_feat.load_state_dict(t["D_feat"])
        self.opt_G.load_state_dict(t["opt_G"])
        self.opt_D.load_state_dict(t["opt_D"])
        self.sched_G.load_state_dict(t["sched_G"])
        self.sched_D.load_state_dict(t["sched_D"])
        if self.G_ema is not None:
            self.G_ema.load_state_dict(t["G_ema"])
        torch.set_rng_state(t["rng_cpu"])
        if self.device.type == "cuda" and "rng_cuda" in t:
            torch.cuda.set_rng_state(t["rng_cuda"], self.device)
        self.epoch, self.history = meta["epoch"], meta["history"]
        if meta.get("best") is not None:
            self.best = (meta["best"][0], meta["best"][1], t["best_G"])

    # -- one training step ------------------------------------------------------------------
    @torch.no_grad()
    def _precompute_logits(self, data: DomainData) -> torch.Tensor:
        """F(x) of every unmodified training image, in fixed chunks (deterministic, so a
        resumed run sees the same values)."""
        chunks = [self.frozen(data.batch(np.arange(i, min(i + 256, len(data))), self.device))
                  for i in range(0, len(data), 256)]
        return torch.cat(chunks)

    def _raw_logits(self, which: str, index: np.ndarray, x: torch.Tensor) -> torch.Tensor:
        """F(x) of unmodified training images. With a classifier in eval mode it is a fixed
        function of the image: computed once for the whole set, then looked up (not for a
        segmenter, whose dense logits would not fit in memory)."""
        if self.cfg.classifier_mode != "eval" or self.task == "segmentation":
            return self.frozen(x)
        if which not in self._logit_cache:
            self._logit_cache[which] = self._precompute_logits(
                self.source if which == "source" else self.target)
        return self._logit_cache[which][torch.as_tensor(index)]

    def _step(self, xs, xt, src, it):
        """``d_steps`` discriminator steps, then one calibrator step, on one batch pair.

        G does not change during the discriminator steps, so its outputs are computed once,
        with gradients, and shared (detached) with them; in eval mode the frozen classifier's
        logits on them are shared the same way. This is the same computation as recomputing
        them (tested bit for bit) at about two thirds of the cost. In the stochastic classifier
        modes every classifier pass still draws its own dropout."""
        cs, ct = self.G(torch.cat([xs, xt])).split([len(xs), len(xt)])
        shared = self.cfg.classifier_mode == "eval"
        f_cs, f_ct = (self.frozen(cs), self.frozen(ct)) if shared else (None, None)
        with torch.no_grad():
            raw = (self._raw_logits("source", src, xs), self._raw_logits("target", it, xt))
        for _ in range(self.cfg.d_steps):
            d = self._discriminator_step(xs, xt, cs.detach(), ct.detach(), raw,
                                         (f_cs.detach(), f_ct.detach()) if shared else None)
        return d, self._calibrator_step(xs, xt, cs, ct, f_cs, f_ct, raw[0])

    def _discriminator_step(self, xs, xt, cs, ct, raw_logits, calibrated_logits):
        with torch.no_grad():
            feats = list(raw_logits)
            feats += list(calibrated_logits) if calibrated_logits is not None else \
                [self.frozen(cs), self.frozen(ct)]
        pix = [self.D_pix(x) for x in (xs, xt, cs, ct)]
        feat = [self.D_feat(f) for f in feats]
        loss_pix, loss_feat = self.loss_D(pix), self.loss_D(feat)
        self.opt_D.zero_grad(set_to_none=True)
        (loss_pix + loss_feat).backward()
        self.opt_D.step()
        acc = lambda logits: float(np.mean([(lg.argmax(1) == g).float().mean().item()
                                            for g, lg in enumerate(logits)]))
        return loss_pix.item(), loss_feat.item(), acc(pix), acc(feat)

    def _calibrator_step(self, xs, xt, cs, ct, f_cs, f_ct, raw_source_logits):
        """Eq. 7, plus the optional terms: w_consistency * L_cons(F(x_s), F(G(x_s))) and
        w_histogram * L_hist(G(x_t), x_s) (both 0 in the paper's setting). Both terms are
        logged whatever their weight (an unweighted one without gradient, and without drawing
        from the random stream that training uses)."""
        cfg = self.cfg
        self.D_pix.requires_grad_(False)
        self.D_feat.requires_grad_(False)
        f_ct = f_ct if f_ct is not None else self.frozen(ct)
        f_cs = f_cs if f_cs is not None else self.frozen(cs)
        loss = self.loss_G(self.D_pix(ct), self.D_feat(f_ct), self.D_pix(cs), self.D_feat(f_cs))
        with torch.set_grad_enabled(bool(cfg.w_consistency)):
            consistency = self.loss_consistency(raw_source_logits, f_cs)
        if cfg.w_histogram:
            histogram = self.loss_histogram(ct, xs)
        else:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                histogram = self.loss_histogram(ct, xs)
        loss = loss + cfg.w_consistency * consistency + cfg.w_histogram * histogram
        self.opt_G.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_G.step()
        self.D_pix.requires_grad_(True)
        self.D_feat.requires_grad_(True)
        if self.G_ema is not None:
            with torch.no_grad():
                for e, p in zip(self.G_ema.parameters(), self.G.parameters()):
                    e.lerp_(p, 1.0 - self.cfg.ema)
        return loss.item(), (ct - xt).abs().mean().item(), consistency.item(), histogram.item()

    def _train_epoch(self, progress: bool) -> dict:
        cfg, b = self.cfg, self.batch
        order_t = epoch_order(len(self.target), cfg.seed, self.epoch)
        order_s = epoch_order(len(self.source), cfg.seed + 1, self.epoch)
        sums = np.zeros(8)
        started = time.time()
        self.G.train()
        label = f"calibrator epoch {self.epoch + 1}/{cfg.epochs}"
        with progress_bar(self.steps, label, progress) as bar:
            for step in range(self.steps):
                it = order_t[step * b:(step + 1) * b].numpy()
                src = order_s[step * b:(step + 1) * b].numpy()
                xs, xt = self.source.batch(src, self.device), self.target.batch(it, self.device)
                d, g = self._step(xs, xt, src, it)
                if not np.all(np.isfinite(d + g)):
                    self._diverged(step, d + g)
                self.sched_G.step()
                self.sched_D.step()
                sums += np.array(d + g)
                bar.update(1, current_item=f"D_pix {d[0]:.3f} D_feat {d[1]:.3f} G {g[0]:.3f}")
        mean = sums / self.steps
        return {"epoch": self.epoch + 1, "steps": self.steps, "time_s": time.time() - started,
                "loss_d_pixel": mean[0], "loss_d_feature": mean[1], "d_acc_pixel": mean[2],
                "d_acc_feature": mean[3], "loss_g": mean[4], "delta_abs_mean": mean[5],
                "loss_consistency": mean[6], "loss_histogram": mean[7],
                "lr": self.sched_G.get_last_lr()[0]}

    def _diverged(self, step: int, values) -> None:
        """Stop: a non-finite loss would poison the weights, the EMA and every later epoch."""
        kept = (f"the last good state (epoch {self.epoch}) is kept in {self.state_path} and "
                "no calibrator was written" if self.epoch else "nothing was written")
        raise EdgeCalibError(f"training stopped at epoch {self.epoch + 1}, step {step + 1}: the "
                             f"losses became non-finite ({', '.join(f'{v:.3g}' for v in values)})"
                             f"; {kept}. Try a lower --lr/--d-lr or a smaller --eps")

    @torch.no_grad()
    def _evaluate(self, row: dict):
        G = self.deployed_G.eval()
        if self.source_test is not None:
            score = scores(self.task, self.classifier.module, self.source_test, G, self.device)
            row[f"source_{self.source_split}_{SCORE[self.task]}"] = score[SCORE[self.task]]
        if self.holdout is not None:
            ent = []
            chunk = 512 if self.task == "classification" else 4
            for start in range(0, len(self.holdout), chunk):
                x = self.holdout.batch(np.arange(start, min(start + chunk, len(self.holdout))),
                                       self.device)
                ent.append(prediction_entropy(self.classifier.module(G(x))).item() * len(x))
            row["holdout_entropy"] = sum(ent) / len(self.holdout)
        if self.monitor is not None:  # logged for curves only, never read by selection
            score = scores(self.task, self.classifier.module, self.monitor, G, self.device)
            row["monitor_target_test_" + SCORE[self.task]] = score[SCORE[self.task]]

    def check_frozen(self):
        now = self.classifier.fingerprint
        if now != self.fingerprint:
            raise EdgeCalibError(f"the frozen classifier changed during training (fingerprint "
                                 f"{self.fingerprint} -> {now}); nothing was written")

    def run(self, progress: bool = True, until_epoch: int | None = None):
        """Train up to ``config.epochs`` (or stop after ``until_epoch``, as an interruption
        would); returns (selected calibrator on CPU, summary)."""
        last = self.cfg.epochs if until_epoch is None else min(until_epoch, self.cfg.epochs)
        while self.epoch < last:
            row = self._train_epoch(progress)
            self._evaluate(row)
            self.epoch += 1
            self.check_frozen()
            if self.cfg.select == "entropy" and (self.best is None
                                                 or row["holdout_entropy"] < self.best[0]):
                self.best = (row["holdout_entropy"], self.epoch,
                             copy.deepcopy(self.deployed_G.state_dict()))
            self.history.append(row)
            write_bytes_atomic(self.metrics_path,
                               "".join(json.dumps(h) + "\n" for h in self.history).encode())
            echo_err(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                 for k, v in row.items()}))
            self.save_state()
        chosen = copy.deepcopy(self.deployed_G).cpu().eval()
        selection = {"rule": "last epoch", "epoch": self.epoch}
        if self.cfg.select == "entropy":
            chosen.load_state_dict(self.best[2])
            selection = {"rule": "lowest prediction entropy on held-out unlabelled target "
                                 f"training images ({len(self.holdout)})",
                         "epoch": self.best[1], "holdout_entropy": self.best[0]}
        last = self.history[-1] if self.history else {}
        summary = {"epochs": self.epoch, "selection": selection,
                   "ema": self.cfg.ema, "last_epoch": last,
                   "time_per_epoch_s": float(np.mean([h["time_s"] for h in self.history]))
                   if self.history else None,
                   "device": str(self.device)}
        return chosen, summary
