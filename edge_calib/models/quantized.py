"""Deployed-form layers: BatchNorm folded away, INT8 fake quantisation with TensorRT's conventions.

TensorRT's explicit quantisation: symmetric, zero point 0, per-channel weight scales
(``max|w| / 127`` per output channel) and per-tensor activation scales, with a Q/DQ pair on the
input of every Conv/Gemm. In torch the same arithmetic runs as fake quantisation
(``torch.fake_quantize_per_*_affine``, core aten ops, not torch.ao), whose gradient is the
straight-through estimator: identity inside the range, zero where the input saturates. So a
calibrator can be trained against exactly the deployed INT8 behaviour.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

QMIN, QMAX = -128, 127

FOLDABLE = (nn.BatchNorm1d, nn.BatchNorm2d)
DROPOUTS = (nn.Dropout, nn.Dropout2d)


def fold_batchnorm(model: nn.Sequential) -> nn.Sequential:
    """Inference-equivalent copy: each BN folded into the Conv/Linear before it, Dropout removed.

    W' = W * g / sqrt(v + e),  b' = (b - m) * g / sqrt(v + e) + beta (per output channel).
    """
    layers: list[tuple[str, nn.Module]] = []
    for name, module in model.named_children():
        if isinstance(module, DROPOUTS):
            continue
        if isinstance(module, FOLDABLE):
            prev_name, prev = layers[-1]
            if not isinstance(prev, (nn.Conv2d, nn.Linear)):
                raise ValueError(f"cannot fold {name}: it does not follow a Conv2d/Linear")
            layers[-1] = (prev_name, _fold(prev, module))
            continue
        layers.append((name, copy.deepcopy(module)))
    return nn.Sequential(OrderedDict(layers))


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


class _QuantLayer(nn.Module):
    """Shared INT8 machinery: input per-tensor scale, weight per-output-channel scales."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.enabled = True  # False while estimating activation ranges in float
        self.weight = nn.Parameter(layer.weight.detach().clone())
        self.bias = nn.Parameter(layer.bias.detach().clone())
        out = self.weight.shape[0]
        self.register_buffer("input_scale", torch.ones(()))
        self.register_buffer("weight_scale", torch.ones(out))

    def set_weight_scale(self):
        """scale_c = max|w_c| / 127 (symmetric per output channel; an all-zero channel gets 1)."""
        amax = self.weight.detach().abs().reshape(self.weight.shape[0], -1).amax(dim=1)
        self.weight_scale.copy_(torch.where(amax > 0, amax / 127.0, torch.ones_like(amax)))

    def quant_input(self, x):
        if not self.enabled:
            return x
        return torch.fake_quantize_per_tensor_affine(x, float(self.input_scale), 0, QMIN, QMAX)

    def quant_weight(self):
        if not self.enabled:
            return self.weight
        zero = torch.zeros(self.weight.shape[0], dtype=torch.int32, device=self.weight.device)
        return torch.fake_quantize_per_channel_affine(self.weight, self.weight_scale, zero, 0,
                                                      QMIN, QMAX)


class QuantConv2d(_QuantLayer):
    def __init__(self, conv: nn.Conv2d):
        super().__init__(conv)
        self.stride, self.padding = conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups

    def forward(self, x):
        return F.conv2d(self.quant_input(x), self.quant_weight(), self.bias, self.stride,
                        self.padding, self.dilation, self.groups)


class QuantLinear(_QuantLayer):
    def forward(self, x):
        return F.linear(self.quant_input(x), self.quant_weight(), self.bias)


def quantize_layers(model: nn.Sequential) -> nn.Sequential:
    """Replace every Conv2d/Linear of a folded model by its fake-quantised twin (scales unset)."""
    layers = []
    for name, module in model.named_children():
        if isinstance(module, nn.Conv2d):
            module = QuantConv2d(module)
        elif isinstance(module, nn.Linear):
            module = QuantLinear(module)
        layers.append((name, module))
    return nn.Sequential(OrderedDict(layers))
