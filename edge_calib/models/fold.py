"""BatchNorm folding: the inference-time form of a network, BatchNorm merged into the
Conv/Linear before it, Dropout removed. Works on nested networks: inside every
``nn.Sequential`` a BatchNorm that follows a Conv/Linear is folded into it."""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import nn

FOLDABLE = (nn.BatchNorm1d, nn.BatchNorm2d)
DROPOUTS = (nn.Dropout, nn.Dropout2d)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Inference-equivalent copy: each BN folded into the Conv/Linear before it, Dropout removed.

    W' = W * g / sqrt(v + e),  b' = (b - m) * g / sqrt(v + e) + beta (per output channel).
    """
    return _fold_tree(copy.deepcopy(model))


def _fold_tree(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.Sequential):
        layers: list[tuple[str, nn.Module]] = []
        for name, child in module.named_children():
            if isinstance(child, DROPOUTS):
                continue
            if isinstance(child, FOLDABLE):
                prev_name, prev = layers[-1] if layers else (None, None)
                if not isinstance(prev, (nn.Conv2d, nn.Linear)):
                    raise ValueError(f"cannot fold {name}: it does not follow a Conv2d/Linear")
                layers[-1] = (prev_name, _fold(prev, child))
                continue
            layers.append((name, _fold_tree(child)))
        return nn.Sequential(OrderedDict(layers))
    for name, child in module.named_children():
        if isinstance(child, FOLDABLE):
            raise ValueError(f"cannot fold {name}: BatchNorm outside an nn.Sequential")
        setattr(module, name, nn.Identity() if isinstance(child, DROPOUTS) else _fold_tree(child))
    return module


def _fold(layer: nn.Module, bn: nn.Module) -> nn.Module:
    folded = copy.deepcopy(layer)
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    shape = (-1,) + (1,) * (folded.weight.dim() - 1)
    bias = folded.bias.detach() if folded.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        folded.weight.mul_(scale.reshape(shape))
        new_bias = (bias - bn.running_mean) * scale + bn.bias.detach()
    folded.bias = nn.Parameter(new_bias)
    return folded
