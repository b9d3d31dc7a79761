"""``edge-calib compress``: prune (optionally fine-tune with fixed masks), fold BatchNorm,
quantise to INT8. The result is a classifier checkpoint with its own fingerprint."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..models.fold import fold_batchnorm
from ..models.int8 import estimate_scales, quantize_layers
from ..models.store import Classifier
from ..train.evaluate import scores
from ..train.source_stats import record_source_stats
from ..train.supervised import Fit, fit
from ..train.tensors import DomainData
from .prune import apply_masks, compute_masks, parse_prune, sparsity_report


def finetune_with_masks(module, masks, data: DomainData, epochs: int, lr: float, batch_size: int,
                        seed: int, progress: bool):
    """Supervised fine-tuning on labelled source data; pruned weights stay zero. Masks may be
    larger than the network's output (CamVid: 480x360 labels, 240x180 input): logits are
    upsampled to the labels, as when scoring. The result is frozen again."""
    torch.manual_seed(seed)
    segmenting = data.labels is not None and data.labels.ndim == 3
    ignore = len(data.classes) if segmenting else -100

    def loss(logits, y):
        if segmenting and logits.shape[-2:] != y.shape[-2:]:
            logits = F.interpolate(logits, size=y.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(logits, y.long(), ignore_index=ignore)

    module.requires_grad_(True)  # a loaded checkpoint's module comes frozen
    fit(module, data, Fit(epochs, batch_size, lr, seed, label="fine-tune"), loss, "cpu",
        after_step=lambda m: apply_masks(m, masks), progress=progress)
    module.requires_grad_(False).eval()


def compress_classifier(clf: Classifier, prune: str | None, int8: bool, calib: DomainData | None,
                        test: DomainData | None = None, finetune: DomainData | None = None,
                        finetune_epochs: int = 0, finetune_lr: float = 1e-4,
                        act_method: str = "percentile", calib_batches: int = 8,
                        batch_size: int = 128, seed: int = 0, progress: bool = True) -> Classifier:
    """A deployable classifier: BN folded, optionally pruned and INT8 fake-quantised.

    ``calib`` (source-domain images) estimates the INT8 activation ranges and gives the
    compressed model's source statistics; ``test`` measures source accuracy (segmenters: mIoU)
    before and after; nothing here touches ``clf`` itself.
    """
    started = time.time()
    pruning = parse_prune(prune)
    task = clf.task
    unit = "miou" if task == "segmentation" else "acc"
    score = lambda m: next(iter(scores(task, m, test).values()))  # noqa: E731
    module = copy.deepcopy(clf.module).eval()
    metrics = {"source_fingerprint": clf.fingerprint, "source_checkpoint": Path(clf.path).name
               if clf.path else None}
    if test is not None:
        metrics[f"float_{unit}"] = score(module)
    if pruning:
        masks = compute_masks(module, *pruning)
        apply_masks(module, masks)
        if test is not None:
            metrics[f"pruned_{unit}_before_finetune"] = score(module)
        if finetune_epochs:
            finetune_with_masks(module, masks, finetune, finetune_epochs, finetune_lr,
                                batch_size if task == "classification" else 4, seed, progress)
            metrics["finetune"] = {"dataset": finetune.name, "epochs": finetune_epochs,
                                   "lr": finetune_lr, "samples": len(finetune)}
    module = fold_batchnorm(module)
    if int8:
        module = quantize_layers(module)
        rng = np.random.default_rng(seed)
        per_batch = batch_size if task == "classification" else 2  # full-resolution frames
        idx = rng.permutation(len(calib))[:calib_batches * per_batch]
        batches = [calib.batch(idx[i:i + per_batch], "cpu") for i in range(0, len(idx), per_batch)]
        metrics["int8_scales"] = estimate_scales(
            module, batches, act_method, values_per_batch=(1 << 21) if task == "classification"
            else (1 << 17))
        metrics["quantization_calibration_data"] = {"dataset": calib.name, "samples": len(idx),
                                                    "activation_range": act_method}
    report = sparsity_report(module, pruning[0] if pruning else None)
    compression = {"folded": True, "int8": bool(int8),
                   "prune": None if not pruning else {"pattern": pruning[0],
                                                      "target_sparsity": pruning[1]},
                   "sparsity": report["total_sparsity"]}
    if test is not None:
        metrics[f"compressed_{unit}"] = score(module)
        metrics["source_test"] = test.name
    metrics["sparsity_report"] = report
    metrics["time_s"] = time.time() - started
    # the deployed model's own statistics on its source images: folding removed the BatchNorm
    # statistics and pruning and INT8 moved the activations
    stats = None if calib is None else record_source_stats(module.eval(), calib, seed=seed)
    out = Classifier(module.eval(), clf.arch, clf.spec, clf.num_classes, clf.labels, compression,
                     metrics, source_stats=stats)
    for p in out.module.parameters():
        p.requires_grad_(False)
    return out
