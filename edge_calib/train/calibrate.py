"""Training a data calibrator against a frozen classifier, with one of two objectives:

- ``adversarial`` (the paper's): per batch pair (x_s source, x_t target), ``d_steps``
  discriminator steps on the four groups (eq. 5, 6), then one calibrator step (eq. 7);
- ``stats``: no discriminator; one calibrator step per batch pair that makes the frozen
  model's activation statistics on calibrated target images match those it has on source
  images (``source_stats``, recorded with the model or, failing that, from ``source``).

Either adds the optional terms (source consistency, pixel histogram, prediction entropy, class
marginal) with their weights. Only the calibrator (and the discriminators) learn; the
classifier's fingerprint is checked after every epoch and any change is an error.

Data-parallel (torchrun): ``--batch-size`` is the global batch, each rank trains on its shard of
every batch pair, the calibrator and the discriminators are in DistributedDataParallel, the
batch statistics are averaged over ranks, and only rank 0 evaluates and writes
(``distributed.py``).

Checkpointing: the whole training state (networks, optimisers, schedule, EMA, RNG states,
history) is written atomically after every epoch; ``resume`` continues bit-for-bit.
Model selection never looks at target labels: the default is the last epoch; ``entropy`` and
``stats`` pick the epoch with the lowest mean prediction entropy, or statistics distance, on a
held-out slice of the *unlabelled* target training images.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import torch

from ..core.errors import EdgeCalibError
from ..core.progress import echo_err
from ..models.checkpoint import load_checkpoint, save_checkpoint
from ..models.discriminators import FeatureDiscriminator, PixelDiscriminator
from ..models.records import CalibratorTrainingState, TrainingSummary
from ..models.store import Classifier, build_calibrator
from .distributed import Distributed
from .evaluate import scores
from .frozen import FrozenForward
from .loop import log_epoch, scheduler
from .memory_budget import StepMemory, batch_that_fits, left_as_found, step_memory
from .metrics_log import SCORE, CalibratorEpoch
from .losses import (
    CalibratorAdversarialLoss,
    GroupDiscriminatorLoss,
    MarginalKLLoss,
    PixelHistogramLoss,
    SourceConsistencyLoss,
    SourceStatsLoss,
    prediction_entropy,
)
from .settings import CalibratorConfig
from .source_stats import SourceStats, activation_taps, record_source_stats, stats_distance, \
    tap_moments
from .scaffold import Epochs
from .tensors import DomainData

STATE = "calibrator-training-state"


class CalibratorTrainer:
    def __init__(self, classifier: Classifier, source: DomainData, target: DomainData,
                 config: CalibratorConfig, device: torch.device, state_path: Path,
                 metrics_path: Path, source_test: DomainData | None = None,
                 source_split: str = "test",
                 monitor: DomainData | None = None, dist: Distributed = Distributed(),
                 cap_batch: bool = False, check_memory: bool = True):
        config.validate()
        self.cfg, self.device, self.dist = config, device, dist
        self.classifier = classifier
        self.task = classifier.task
        self.fingerprint = classifier.fingerprint
        self.frozen = FrozenForward(classifier.module.to(device), config.classifier_mode)
        self.source = source
        self.target, self.holdout = target.split(config.holdout, config.seed)
        self.source_test, self.source_split = source_test, source_split  # labelled source
        self.monitor = monitor
        self.state_path, self.metrics_path = state_path, metrics_path
        self.stats = self._source_stats()
        torch.manual_seed(config.run_seed)
        spec = classifier.spec
        self.G = build_calibrator(config.calibrator_config(), spec).to(device)
        if hasattr(self.G, "set_source_quantiles"):  # a family that contains histogram matching
            self.G.set_source_quantiles(self.stats.pixel_quantiles)
        if config.init == "histogram":
            self.G.start_at_histogram_matching()
        self.G_ema = copy.deepcopy(self.G).requires_grad_(False) if config.ema > 0 else None
        self.D_pix = PixelDiscriminator(spec.channels, config.patch).to(device)
        self.D_feat = FeatureDiscriminator(classifier.num_classes).to(device)
        betas = (config.beta1, 0.999)
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=config.lr, betas=betas)
        self.opt_D = torch.optim.Adam(list(self.D_pix.parameters()) + list(self.D_feat.parameters()),
                                      lr=config.d_lr, betas=betas)
        # batch statistics over every rank's shard (None: one process, the plain formulas)
        self.rank_mean = dist.mean_over_ranks if dist.active else None
        self.G_train = dist.wrap(self.G)  # what the training steps call (DDP when distributed)
        self.D_train = (dist.wrap(Discriminators(self.D_pix, self.D_feat))
                        if config.objective == "adversarial" else None)
        # One epoch = one pass over the smaller domain (as zip(source_loader, target_loader)
        # in the reference code); each domain is drawn without replacement in its own order.
        # The batch is global: with N processes each trains on its 1/N of it.
        dist.per_rank(config.batch_size)
        self.batch = min(config.batch_size, len(self.target), len(self.source))
        self.batch -= self.batch % dist.world_size
        if self.batch == 0:
            raise EdgeCalibError(f"{min(len(self.target), len(self.source))} images cannot be "
                                 f"split over {dist.world_size} processes")
        if check_memory and len(self.target) >= 3:  # a step: a source and a target batch
            fits = dist.world_size * batch_that_fits(
                self._step_memory(), self.batch // dist.world_size, device, dist, cap=cap_batch,
                scale=2)
            if fits < self.batch:
                self.batch, self.cfg = fits, dataclasses.replace(self.cfg, batch_size=fits)
        self.steps = max(1, min(len(self.target), len(self.source)) // self.batch)
        total = self.steps * config.epochs
        self.sched_G = scheduler(self.opt_G, config.schedule, total)
        self.sched_D = scheduler(self.opt_D, config.schedule, total)
        self.loss_D, self.loss_G = GroupDiscriminatorLoss(), CalibratorAdversarialLoss(
            config.w_target, config.w_source, config.w_pixel, config.w_feature)
        self.loss_consistency, self.loss_histogram = SourceConsistencyLoss(), PixelHistogramLoss()
        n = config.stats_layers or len(self.stats.means)
        self.loss_stats = SourceStatsLoss(self.stats.means[:n], self.stats.variances[:n])
        self.loss_marginal = MarginalKLLoss(self.stats.class_marginal)
        self.epoch, self.history = 0, []
        self._logit_cache: dict[str, torch.Tensor] = {}
        self.best = None  # (score, epoch, state) for entropy selection
        self.restarts: list[dict] | None = None  # the starts scored before this one continued

    def _step_memory(self) -> StepMemory:
        """A step's memory per image, from the graph a step holds at its peak, on the first two
        and four target images: the calibrator and the frozen classifier behind it (what the
        calibrator's gradients flow through) and, with the adversarial objective, the pixel
        discriminator on raw and calibrated images (its step runs while that graph is held).
        The random state and the calibrator's buffers are put back."""
        def forward_on(n: int) -> torch.Tensor:
            x = self.target.batch(np.arange(n), self.device)
            calibrated = self.G(x)
            held = self.frozen(calibrated).float().mean()
            if self.cfg.objective == "adversarial":
                held = held + self.D_pix(torch.cat([x, calibrated])).float().mean()
            return held

        trainable = [*self.G.parameters(), *self.D_pix.parameters(), *self.D_feat.parameters()]
        with left_as_found([self.G], self.device):
            return step_memory(forward_on, trainable, (2, min(4, len(self.target))), self.device)

    def _source_stats(self) -> SourceStats:
        """The frozen model's recorded source statistics; recorded here from the source images
        when the checkpoint has none, or when training at another size than the model's."""
        stats = self.classifier.source_stats
        spec = self.classifier.spec
        resized = self.cfg.train_size not in (None, (spec.height, spec.width))
        if stats is None or resized:
            why = "at the training size" if stats is not None else "none recorded with the model"
            echo_err(f"source statistics: recording them on {self.source.name} "
                     f"({min(len(self.source), 2048)} images; {why})")
            graph = None if resized else self.classifier.onnx_bytes  # imported: ONNX Runtime
            stats = record_source_stats(self.classifier.module, self.source, device=self.device,
                                        graph=graph)
        probe = self.source.batch(np.arange(min(2, len(self.source))), self.device)
        with torch.no_grad(), activation_taps(self.classifier.module) as values:
            self.classifier.module(probe)
        stats.check_fits(tap_moments(values), str(self.classifier.path or "the classifier"))
        return stats

    # -- the calibrator used for evaluation and output --------------------------------------
    @property
    def deployed_G(self):
        return self.G_ema if self.G_ema is not None else self.G

    # -- state ------------------------------------------------------------------------------
    def save_state(self):
        if not self.dist.is_main:
            return
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
        state = CalibratorTrainingState(
            config=dataclasses.asdict(self.cfg), epoch=self.epoch, history=self.history,
            classifier_fingerprint=self.fingerprint,
            best=None if self.best is None else list(self.best[:2]), restarts=self.restarts)
        save_checkpoint(self.state_path, STATE, state.to_dict(), tensors)

    def load_state(self):
        meta, t = load_checkpoint(self.state_path, STATE)
        state = CalibratorTrainingState.read(meta, str(self.state_path))
        diffs = self.cfg.resumable_from(state.config)
        if diffs:
            raise EdgeCalibError(f"cannot resume {self.state_path}: settings differ from the saved "
                                 f"run ({', '.join(diffs)})")
        if state.classifier_fingerprint != self.fingerprint:
            raise EdgeCalibError(f"cannot resume {self.state_path}: it was trained against "
                                 f"classifier {state.classifier_fingerprint}, not "
                                 f"{self.fingerprint}")
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
        self.epoch, self.history = state.epoch, state.history
        if state.best is not None:
            self.best = (state.best[0], state.best[1], t["best_G"])
        self.restarts = state.restarts

    # -- one training step ------------------------------------------------------------------
    @torch.no_grad()
    def _precompute_logits(self, data: DomainData) -> torch.Tensor:
        """F(x) of every unmodified training image, in chunks of a process's training batch
        (its step was checked to fit in memory; the batch is saved with the state, so a resumed
        run sees the same values)."""
        chunk = self.batch // self.dist.world_size
        chunks = [self.frozen(data.batch(np.arange(i, min(i + chunk, len(data))), self.device))
                  for i in range(0, len(data), chunk)]
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

    def _step(self, xs, xt, src, it) -> dict:
        """One batch pair: the objective's discriminator steps (adversarial), then one
        calibrator step; returns the values logged.

        G does not change during the discriminator steps, so its outputs are computed once,
        with gradients, and shared (detached) with them; in eval mode the frozen classifier's
        logits on them are shared the same way. This is the same computation as recomputing
        them (tested bit for bit) at about two thirds of the cost. In the stochastic classifier
        modes every classifier pass still draws its own dropout."""
        cfg = self.cfg
        if cfg.objective == "stats":
            return self._calibrator_step(xs, xt, *self._calibrated(xs, xt, cfg.w_consistency > 0))
        cs, ct = self.G_train(torch.cat([xs, xt])).split([len(xs), len(xt)])
        shared = cfg.classifier_mode == "eval"
        f_cs, f_ct, taps = None, None, None
        if shared:
            f_cs = self.frozen(cs)
            with activation_taps(self.frozen.module) as taps:
                f_ct = self.frozen(ct)
        with torch.no_grad():
            raw = (self._raw_logits("source", src, xs), self._raw_logits("target", it, xt))
        for _ in range(cfg.d_steps):
            d = self._discriminator_step(xs, xt, cs.detach(), ct.detach(), raw,
                                         (f_cs.detach(), f_ct.detach()) if shared else None)
        return d | self._calibrator_step(xs, xt, cs, ct, f_cs, f_ct, taps, raw[0])

    def _calibrated(self, xs, xt, with_source: bool):
        """Stats objective: (G(x_s), G(x_t), F(G(x_s)), F(G(x_t)), taps of F(G(x_t)), F(x_s));
        the source passes only when a source term needs them."""
        if not with_source:
            ct = self.G_train(xt)
            with activation_taps(self.frozen.module) as taps:
                f_ct = self.frozen(ct)
            return None, ct, None, f_ct, taps, None
        cs, ct = self.G_train(torch.cat([xs, xt])).split([len(xs), len(xt)])
        f_cs = self.frozen(cs)
        with activation_taps(self.frozen.module) as taps:
            f_ct = self.frozen(ct)
        with torch.no_grad():
            raw = self.frozen(xs)
        return cs, ct, f_cs, f_ct, taps, raw

    def _discriminator_step(self, xs, xt, cs, ct, raw_logits, calibrated_logits) -> dict:
        with torch.no_grad():
            feats = list(raw_logits)
            feats += list(calibrated_logits) if calibrated_logits is not None else \
                [self.frozen(cs), self.frozen(ct)]
        pix, feat = self.D_train((xs, xt, cs, ct), feats)
        loss_pix, loss_feat = self.loss_D(pix), self.loss_D(feat)
        self.opt_D.zero_grad(set_to_none=True)
        (loss_pix + loss_feat).backward()
        self.opt_D.step()
        acc = lambda logits: float(np.mean([(lg.argmax(1) == g).float().mean().item()
                                            for g, lg in enumerate(logits)]))
        return {"loss_d_pixel": loss_pix.item(), "loss_d_feature": loss_feat.item(),
                "d_acc_pixel": acc(pix), "d_acc_feature": acc(feat)}

    def _calibrator_step(self, xs, xt, cs, ct, f_cs, f_ct, taps, raw_source_logits) -> dict:
        """The objective's main term (eq. 7, or w_stats * L_stats), plus the optional terms
        w_consistency * L_cons(F(x_s), F(G(x_s))), w_histogram * L_hist(G(x_t), x_s),
        w_entropy * H(F(G(x_t))) and w_marginal * L_marg(F(G(x_t))). The histogram, consistency
        (when computed), statistics and entropy terms are logged whatever their weight (an
        unweighted one without gradient; the histogram term without drawing from the random
        stream that training uses)."""
        cfg = self.cfg
        row = {}
        if cfg.objective == "adversarial":
            self.D_pix.requires_grad_(False)
            self.D_feat.requires_grad_(False)
            if f_ct is None:
                with activation_taps(self.frozen.module) as taps:
                    f_ct = self.frozen(ct)
            f_cs = f_cs if f_cs is not None else self.frozen(cs)
            loss = self.loss_G(self.D_pix(ct), self.D_feat(f_ct), self.D_pix(cs),
                               self.D_feat(f_cs))
            row["loss_adversarial"] = loss.item()
        with torch.set_grad_enabled(cfg.objective == "stats"):
            stats = self.loss_stats(tap_moments(taps, self.rank_mean))
        if cfg.objective == "stats":
            loss = cfg.w_stats * stats
        if f_cs is not None:
            with torch.set_grad_enabled(bool(cfg.w_consistency)):
                consistency = self.loss_consistency(raw_source_logits, f_cs)
            loss = loss + cfg.w_consistency * consistency
            row["loss_consistency"] = consistency.item()
        if cfg.w_histogram:
            histogram = self.loss_histogram(ct, xs)
        else:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                histogram = self.loss_histogram(ct, xs)
        with torch.set_grad_enabled(bool(cfg.w_entropy)):
            entropy = prediction_entropy(f_ct)
        loss = loss + cfg.w_histogram * histogram + cfg.w_entropy * entropy
        if cfg.w_marginal:
            marginal = self.loss_marginal(f_ct, self.rank_mean)
            loss = loss + cfg.w_marginal * marginal
            row["loss_marginal"] = marginal.item()
        self.opt_G.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_G.step()
        if cfg.objective == "adversarial":
            self.D_pix.requires_grad_(True)
            self.D_feat.requires_grad_(True)
        if self.G_ema is not None:
            with torch.no_grad():
                for e, p in zip(self.G_ema.parameters(), self.G.parameters()):
                    e.lerp_(p, 1.0 - self.cfg.ema)
        return row | {"loss_g": loss.item(), "delta_abs_mean": (ct - xt).abs().mean().item(),
                      "loss_histogram": histogram.item(), "loss_stats": stats.item(),
                      "entropy": entropy.item()}

    def _train_epoch(self, progress: bool) -> CalibratorEpoch:
        """One pass over the smaller domain, each drawn in its own order."""
        cfg = self.cfg

        def step(_, it, src) -> dict:
            xs, xt = self.source.batch(src, self.device), self.target.batch(it, self.device)
            values = self._step(xs, xt, src, it)
            self.sched_G.step()
            if cfg.objective == "adversarial":
                self.sched_D.step()
            return values

        self.G.train()
        # a non-finite loss would poison the weights, the EMA and every later epoch
        epochs = Epochs((len(self.target), len(self.source)), (cfg.run_seed, cfg.run_seed + 1),
                        self.batch, self.steps, cfg.epochs, "calibrator epoch", self.state_path,
                        "losses", "Try a lower --lr/--d-lr or a smaller --eps",
                        written=" and no calibrator was written", dist=self.dist)
        means, seconds = epochs.run(self.epoch, step, progress, shown=(
            "loss_d_pixel", "loss_d_feature", "loss_g", "loss_stats"))
        return CalibratorEpoch(epoch=self.epoch + 1, steps=self.steps, time_s=seconds,
                               values=means, lr=self.sched_G.get_last_lr()[0],
                               world_size=self.dist.world_size, score_name=SCORE[self.task])

    def _evaluate(self, row: CalibratorEpoch) -> CalibratorEpoch:
        """The epoch's scores, computed on rank 0 and given to every rank."""
        return dataclasses.replace(row, **self.dist.from_main(self._scores))

    @torch.no_grad()
    def _scores(self) -> dict:
        """``CalibratorEpoch``'s score fields for this epoch."""
        row: dict = {}
        G = self.deployed_G.eval()
        if self.source_test is not None:
            score = scores(self.task, self.classifier.module, self.source_test, G, self.device,
                           self._eval_chunk)
            row |= {"source_split": self.source_split, "source_score": score[SCORE[self.task]]}
        if self.holdout is not None:
            ent, chunk = [], self._eval_chunk
            for start in range(0, len(self.holdout), chunk):
                x = self.holdout.batch(np.arange(start, min(start + chunk, len(self.holdout))),
                                       self.device)
                ent.append(prediction_entropy(self.classifier.module(G(x))).item() * len(x))
            row["holdout_entropy"] = sum(ent) / len(self.holdout)
            row["holdout_stats"] = self._stats_distance()
        if self.monitor is not None:  # logged for curves only, never read by selection
            score = scores(self.task, self.classifier.module, self.monitor, G, self.device,
                           self._eval_chunk)
            row["monitor_target"] = score[SCORE[self.task]]
        return row

    def unlabelled_stats_distance(self) -> float:
        """The statistics distance of the calibrated frozen model on the held-out target
        images, or on all the target training images when none are held out (no labels);
        computed on rank 0, the same on every rank."""
        return self.dist.from_main(self._stats_distance)

    @torch.no_grad()
    def _stats_distance(self) -> float:
        data = self.holdout if self.holdout is not None else self.target
        return stats_distance(self.classifier.module, data, self.stats, self.deployed_G.eval(),
                              self._eval_chunk, self.device)

    @property
    def _eval_chunk(self) -> int:
        """Images per no-grad forward when scoring: a process's training batch (its step of a
        source and a target batch was checked to fit), at most 512 (4 for a segmenter)."""
        return min(self.batch // self.dist.world_size, 512 if self.task == "classification" else 4)

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
            row = self._evaluate(self._train_epoch(progress))
            self.epoch += 1
            self.check_frozen()
            select = self.cfg.select
            if select != "last" and (self.best is None or row.holdout(select) < self.best[0]):
                self.best = (row.holdout(select), self.epoch,
                             copy.deepcopy(self.deployed_G.state_dict()))
            self.history.append(row.to_dict())
            if self.dist.is_main:
                log_epoch(self.history[-1], self.history, self.metrics_path)
            self.save_state()
        chosen = copy.deepcopy(self.deployed_G).cpu().eval()
        selection = {"rule": "last epoch", "epoch": self.epoch}
        if self.cfg.select != "last":
            chosen.load_state_dict(self.best[2])
            what = {"entropy": "prediction entropy",
                    "stats": "source-statistics distance"}[self.cfg.select]
            selection = {"rule": f"lowest {what} on held-out unlabelled target training images "
                                 f"({len(self.holdout)})",
                         "epoch": self.best[1], f"holdout_{self.cfg.select}": self.best[0]}
        summary = TrainingSummary(
            epochs=self.epoch, selection=selection, restarts=self.restarts, ema=self.cfg.ema,
            last_epoch=self.history[-1] if self.history else {},
            time_per_epoch_s=float(np.mean([h["time_s"] for h in self.history]))
            if self.history else None, device=str(self.device),
            world_size=self.dist.world_size, batch_size=self.batch)
        return chosen, summary


class Discriminators(torch.nn.Module):
    """The pixel and feature discriminators scored on the four groups in one forward call, so
    that one DistributedDataParallel wrapper sees one forward per backward."""

    def __init__(self, pixel: torch.nn.Module, feature: torch.nn.Module):
        super().__init__()
        self.pixel, self.feature = pixel, feature

    def forward(self, images, features):
        return [self.pixel(x) for x in images], [self.feature(f) for f in features]
