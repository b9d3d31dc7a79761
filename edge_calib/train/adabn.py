"""AdaBN baseline (Li et al., 2016): re-estimate BatchNorm statistics on target images.

A cheap, strong comparison for calibrators; unlike a calibrator it *changes the deployed
model* (new BN statistics, new fingerprint), which the edge deployment story forbids.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ..core.errors import EdgeCalibError
from ..models.store import Classifier
from .tensors import DomainData

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


@torch.no_grad()
def adapt_batchnorm(clf: Classifier, target: DomainData, batch_size: int = 256) -> Classifier:
    """A copy of ``clf`` whose BN running mean/var are the cumulative averages of the target
    batch statistics (momentum None); weights and everything else unchanged."""
    if clf.compression and clf.compression.get("folded"):
        raise EdgeCalibError("AdaBN needs the float classifier: BatchNorm is folded in this one")
    module = copy.deepcopy(clf.module).eval()
    bns = [m for m in module.modules() if isinstance(m, _BN)]
    if not bns:
        raise EdgeCalibError(f"{clf.arch} has no BatchNorm layers: AdaBN does not apply")
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    for start in range(0, len(target), batch_size):
        module(target.batch(np.arange(start, min(start + batch_size, len(target))), "cpu"))
    for bn in bns:
        bn.momentum = 0.1
    module.eval()
    metrics = {"adabn_target": target.name, "adabn_images": len(target),
               "source_fingerprint": clf.fingerprint} | {
        k: v for k, v in clf.metrics.items() if k in ("source", "source_test")}
    return Classifier(module, clf.arch, clf.spec, clf.num_classes, clf.labels, None, metrics)
