"""What every data calibrator shares: a bounded residual on the classifier's input.

    G(x) = clamp(x + delta(x), lo, hi)
    delta(x) = eps * tanh(h(x))                      (symmetric, default)
    delta(x) = clamp((tanh(h(x)) + 1) / 2, 0, eps)   (one-sided, the reference code's)

so ||delta||_inf <= eps whatever the weights, and the output stays in the input range
[lo, hi] (pixel 0 .. pixel 255 after normalisation), inside the INT8 classifier's input
quantiser. Each family computes h (its ``raw`` method) its own way and zero-initialises the
layer that produces it, so an untrained symmetric calibrator is exactly the identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...core.errors import EdgeCalibError
from ..families import PERTURBATIONS



@dataclass(frozen=True)
class SizeKey:
    """One architecture setting of a family: its default, smallest value and meaning."""

    default: int
    minimum: int
    help: str


class BoundedCalibrator(nn.Module):
    """Base class: subclasses set ``arch``, ``SIZE`` (name -> SizeKey) and ``PRESETS``, build their layers in ``build(channels, **size)`` and compute h in ``raw``."""

    arch = ""
    SIZE: dict[str, SizeKey] = {}
    PRESETS: dict[str, dict[str, int]] = {}

    def __init__(self, channels: int = 3, eps: float = 0.5, lo=-1.0, hi=1.0,
                 perturbation: str = "symmetric", **size):
        super().__init__()
        eps = float(eps)
        if not (eps > 0 and eps != float("inf")):
            raise EdgeCalibError(f"eps must be a positive finite number, got {eps}")
        if perturbation not in PERTURBATIONS:
            raise EdgeCalibError(f"unknown perturbation {perturbation!r}; choose one of "
                                 f"{', '.join(PERTURBATIONS)}")
        size = self.check_size(size)
        self.eps, self.perturbation = eps, perturbation
        self.config = {"arch": self.arch, "channels": channels, **size, "eps": eps,
                       "perturbation": perturbation}
        lo_t = torch.as_tensor(lo, dtype=torch.float32).reshape(-1)
        hi_t = torch.as_tensor(hi, dtype=torch.float32).reshape(-1)
        # one bound for every channel exports as a single Clip node, per-channel as Max + Min
        self.scalar_bounds = None
        if bool((lo_t == lo_t[0]).all()) and bool((hi_t == hi_t[0]).all()):
            self.scalar_bounds = (float(lo_t[0]), float(hi_t[0]))
        self.register_buffer("lo", lo_t.reshape(1, -1, 1, 1), persistent=False)
        self.register_buffer("hi", hi_t.reshape(1, -1, 1, 1), persistent=False)
        self.build(channels, **size)

    @classmethod
    def check_size(cls, size: dict) -> dict:
        """Every size key of the family, defaults filled in, each an int >= its minimum."""
        unknown = sorted(set(size) - set(cls.SIZE))
        if unknown:
            raise EdgeCalibError(f"calibrator {cls.arch!r} has no size setting "
                                 f"{', '.join(unknown)}; its settings are "
                                 f"{', '.join(cls.SIZE) or 'none'}")
        out = {}
        for key, spec in cls.SIZE.items():
            value = size.get(key, spec.default)
            if isinstance(value, bool) or not isinstance(value, int) or value < spec.minimum:
                raise EdgeCalibError(f"calibrator {cls.arch!r}: {key} must be an integer >= "
                                     f"{spec.minimum}, got {value!r}")
            out[key] = value
        return out

    def build(self, channels: int, **size) -> None:
        raise NotImplementedError

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """h(x), the unbounded perturbation, shaped like x."""
        raise NotImplementedError

    def bound(self, h: torch.Tensor) -> torch.Tensor:
        if self.perturbation == "symmetric":
            return self.eps * torch.tanh(h)
        return torch.clamp((torch.tanh(h) + 1.0) / 2.0, 0.0, self.eps)

    def perturbation_of(self, x: torch.Tensor) -> torch.Tensor:
        """delta(x), before clamping x + delta to the input range."""
        return self.bound(self.raw(x))

    def clamp_to_range(self, y: torch.Tensor) -> torch.Tensor:
        if self.scalar_bounds is not None:
            return torch.clamp(y, *self.scalar_bounds)
        return torch.minimum(torch.maximum(y, self.lo), self.hi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clamp_to_range(x + self.perturbation_of(x))


def zero_init(layer: nn.Module) -> nn.Module:
    """The layer that produces h starts at zero: delta = 0, the identity."""
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer
