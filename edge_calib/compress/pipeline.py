"""``edge-calib compress``: prune (optionally fine-tune with fixed masks), fold BatchNorm,
quantise to INT8. The result is a classifier checkpoint with its own fingerprint."""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..int8 import estimate_scales, quantize_layers
from ..models.store import Classifier
from ..progress import progress_bar
from ..train.evaluate import accuracy
from ..train.tensors import DomainData, epoch_order
from .fold import fold_batchnorm
from .prune import apply_masks, compute_masks, parse_prune, sparsity_report


def finetune_with_masks(module, masks, data: DomainData, epochs: int, lr: float, batch_size: int,
                        seed: int, progress: bool):
    """Supervised fine-tuning on labelled source data; pruned weights stay zero."""
    torch.manual_seed(seed)
    optimiser = torch.optim.Adam(module.parameters(), lr=lr)
    steps = len(data) // batch_size
    for epoch in range(epochs):
        module.train()
        order = epoch_order(len(data), seed, epoch)
        with progress_bar(steps, f"fine-tune {epoch + 1}/{epochs}", progress) as bar:
            for step in range(steps):
                idx = order[step * batch_size:(step + 1) * batch_size].numpy()
                loss = F.cross_entropy(module(data.batch(idx, "cpu")), data.labels_of(idx, "cpu"))
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                apply_masks(module, masks)
                bar.update(1, current_item=f"loss {loss.item():.4f}")
    module.eval()


def compress_classifier(clf: Classifier, prune: str | None, int8: bool, calib: DomainData | None,
                        test: DomainData | None = None, finetune: DomainData | None = None,
                        finetune_epochs: int = 0, finetune_lr: float = 1e-4,
                        act_method: str = "percentile", calib_batches: int = 8,
                        batch_size: int = 128, seed: int = 0, progress: bool = True) -> Classifier:
    """A deployable classifier: BN folded, optionally pruned and INT8 fake-quantised.

    ``calib`` (source-domain images) estimates the INT8 activation ranges; ``test`` measures
    source accuracy before and after; nothing here touches ``clf`` itself.
    """
    started = time.time()
    pruning = parse_prune(prune)
    module = copy.deepcopy(clf.module).eval()
    metrics = {"source_fingerprint": clf.fingerprint, "source_checkpoint": clf.path}
    if test is not None:
        metrics["float_acc"] = accuracy(module, test)
    if pruning:
        masks = compute_masks(module, *pruning)
        apply_masks(module, masks)
        if test is not None:
            metrics["pruned_acc_before_finetune"] = accuracy(module, test)
        if finetune_epochs:
            finetune_with_masks(module, masks, finetune, finetune_epochs, finetune_lr,
                                batch_size, seed, progress)
            metrics["finetune"] = {"dataset": finetune.name, "epochs": finetune_epochs,
                                   "lr": finetune_lr, "samples": len(finetune)}
    module = fold_batchnorm(module)
    if int8:
        module = quantize_layers(module)
        rng = np.random.default_rng(seed)
        idx = rng.permutation(len(calib))[:calib_batches * batch_size]
        batches = [calib.batch(idx[i:i + batch_size], "cpu") for i in range(0, len(idx), batch_size)]
        metrics["int8_scales"] = estimate_scales(module, batches, act_method)
        metrics["quantization_calibration_data"] = {"dataset": calib.name, "samples": len(idx),
                                                    "activation_range": act_method}
    report = sparsity_report(module, pruning[0] if pruning else None)
    compression = {"folded": True, "int8": bool(int8),
                   "prune": None if not pruning else {"pattern": pruning[0],
                                                      "target_sparsity": pruning[1]},
                   "sparsity": report["total_sparsity"]}
    if test is not None:
        metrics["compressed_acc"] = accuracy(module, test)
        metrics["source_test"] = test.name
    metrics["sparsity_report"] = report
    metrics["time_s"] = time.time() - started
    out = Classifier(module.eval(), clf.arch, clf.spec, clf.num_classes, clf.labels, compression,
                     metrics)
    for p in out.module.parameters():
        p.requires_grad_(False)
    return out
