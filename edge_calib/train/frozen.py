"""Running the deployed classifier inside training without ever changing it.

The classifier's weights and BatchNorm statistics are the deployed model: calibrator training
must not alter them (the reference code did, silently: a hidden AdaBN). How it *runs* in the
training forward pass is a choice, though:

- ``eval``: exactly as deployed (default);
- ``dropout``: dropout active, BN with its stored statistics;
- ``batch-stats``: BN normalises with batch statistics, dropout off;
- ``train``: both (the reference code's behaviour, minus the state drift).

The non-eval modes run the module with ``torch.func.functional_call`` on *copies* of its
buffers, so BN's running-statistic updates land in throwaway tensors.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from ..core.errors import EdgeCalibError
from .settings import CLASSIFIER_MODES

_DROPOUT = (nn.Dropout, nn.Dropout2d, nn.Dropout1d, nn.AlphaDropout)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class FrozenForward:
    """Call the classifier in a chosen training-time mode; its stored state never changes."""

    def __init__(self, module: nn.Module, mode: str = "eval"):
        if mode not in CLASSIFIER_MODES:
            raise EdgeCalibError(f"unknown classifier mode {mode!r}; choose one of "
                                 f"{', '.join(CLASSIFIER_MODES)}")
        self.module, self.mode = module.eval(), mode
        for p in module.parameters():
            p.requires_grad_(False)
        self._active = [m for m in module.modules()
                        if (mode in ("dropout", "train") and isinstance(m, _DROPOUT))
                        or (mode in ("batch-stats", "train") and isinstance(m, _BATCHNORM))]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self._active:
            return self.module(x)
        buffers = {name: b.clone() for name, b in self.module.named_buffers()}
        for m in self._active:
            m.train()
        try:
            return functional_call(self.module, buffers, (x,))
        finally:
            for m in self._active:
                m.eval()
