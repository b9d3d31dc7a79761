"""INT8 post-training quantisation with TensorRT's conventions (symmetric, zero point 0,
per-channel weights, per-tensor activations), scales estimated on source-domain
*quantization calibration data* (unrelated to our data calibrators)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import EdgeCalibError
from ..models.quantized import _QuantLayer

ACTIVATION_METHODS = ("max", "percentile")


@torch.no_grad()
def estimate_scales(model: nn.Module, batches, method: str = "percentile",
                    percentile: float = 99.99) -> dict:
    """Set every quantised layer's weight scale (max|w| / 127 per channel) and input scale
    (amax / 127, amax = max or ``percentile`` of |input| over the float model's activations).

    Returns {layer: {"input_amax", "input_scale"}} for the report.
    """
    if method not in ACTIVATION_METHODS:
        raise EdgeCalibError(f"unknown activation calibration {method!r}; choose "
                             f"{', '.join(ACTIVATION_METHODS)}")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, _QuantLayer)}
    samples: dict[str, list[np.ndarray]] = {n: [] for n in layers}
    hooks = [m.register_forward_pre_hook(
        lambda mod, args, name=n: samples[name].append(args[0].detach().abs().flatten().numpy()))
        for n, m in layers.items()]
    for m in layers.values():
        m.enabled = False
    try:
        model.eval()
        for x in batches:
            model(x)
    finally:
        for h in hooks:
            h.remove()
        for m in layers.values():
            m.enabled = True
    report = {}
    for name, module in layers.items():
        values = np.concatenate(samples[name])
        amax = float(values.max() if method == "max" else np.percentile(values, percentile))
        amax = amax if amax > 0 else 1.0
        module.input_scale.fill_(amax / 127.0)
        module.set_weight_scale()
        report[name] = {"input_amax": amax, "input_scale": amax / 127.0}
    return report
