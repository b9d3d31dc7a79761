"""Magnitude pruning: unstructured at a given sparsity, or 2:4 semi-structured.

2:4 is the pattern of the sparse tensor cores of Ampere and newer GPUs (Orin): in every group
of 4 consecutive weights along the *input-channel* dimension, 2 are zero. Layers whose input
channels are not a multiple of 4 (e.g. an RGB first conv) are left dense and reported.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.errors import EdgeCalibError

PRUNABLE = (nn.Conv2d, nn.Linear)


def parse_prune(spec: str | None) -> tuple[str, float] | None:
    """``"2:4"`` -> ("2:4", 0.5); ``"0.7"`` or ``"70%"`` -> ("unstructured", 0.7); None/none."""
    if spec is None or spec.lower() in ("", "none"):
        return None
    if spec == "2:4":
        return ("2:4", 0.5)
    try:
        value = float(spec.rstrip("%")) / (100.0 if spec.endswith("%") else 1.0)
    except ValueError:
        raise EdgeCalibError(f"--prune {spec!r}: use 2:4 or a sparsity such as 0.5 or 50%") from None
    if not 0 < value < 1:
        raise EdgeCalibError(f"--prune sparsity must be in (0, 1), got {value}")
    return ("unstructured", value)


def two_four_mask(weight: torch.Tensor) -> torch.Tensor | None:
    """Keep the 2 largest |w| of each 4 consecutive input channels (None when C_in % 4 != 0)."""
    c_in = weight.shape[1]
    if c_in % 4:
        return None
    w = weight.detach().movedim(1, -1)  # (..., C_in)
    groups = w.abs().reshape(*w.shape[:-1], c_in // 4, 4)
    keep = groups.argsort(dim=-1, descending=True)[..., :2]
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.reshape(w.shape).movedim(-1, 1)


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Zero the ``sparsity`` fraction of smallest-magnitude weights of one layer."""
    k = int(round(sparsity * weight.numel()))
    if k == 0:
        return torch.ones_like(weight, dtype=torch.bool)
    threshold = weight.detach().abs().flatten().kthvalue(k).values
    return weight.detach().abs() > threshold


def compute_masks(model: nn.Module, pattern: str, sparsity: float) -> dict[str, torch.Tensor]:
    masks = {}
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE):
            mask = two_four_mask(module.weight) if pattern == "2:4" else \
                magnitude_mask(module.weight, sparsity)
            if mask is not None:
                masks[name] = mask
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        modules[name].weight.mul_(mask.to(modules[name].weight.dtype))


def sparsity_report(model: nn.Module, pattern: str | None = None) -> dict:
    """Per-layer and total fraction of zero weights in Conv/Linear layers; 2:4 conformity."""
    layers, zeros, total = {}, 0, 0
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE) or hasattr(module, "weight_scale"):
            w = module.weight.detach()
            z = int((w == 0).sum())
            entry = {"zeros": z, "weights": w.numel(), "sparsity": round(z / w.numel(), 4)}
            if pattern == "2:4":
                entry["two_four"] = is_two_four(w)
            layers[name] = entry
            zeros, total = zeros + z, total + w.numel()
    return {"pattern": pattern, "total_sparsity": round(zeros / max(total, 1), 4),
            "layers": layers}


def is_two_four(weight: torch.Tensor) -> bool:
    """Every group of 4 consecutive input-channel weights has at least 2 zeros."""
    if weight.shape[1] % 4:
        return False
    groups = (weight.movedim(1, -1) == 0).reshape(-1, 4)
    return bool((groups.sum(dim=1) >= 2).all())
