"""``--domain auto``: name the domain of each frame with the bundle's small domain classifier
and switch only when a sliding window agrees (hysteresis), so an odd frame does not flip it."""

from __future__ import annotations

import collections
import json

import numpy as np

from ..core.errors import EdgeCalibError
from ..imaging.domain_features import FEATURES, NAME, image_features, predict_logistic


def load_domain_model(path, bundle_domains: list[str]) -> dict:
    """The bundle's domain classifier, refused in one line unless its domain names, weights,
    bias and feature scaling agree with each other and name only the bundle's domains."""
    try:
        model = json.loads(open(path).read())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgeCalibError(f"{path}: cannot read the domain classifier ({exc})") from None
    if not isinstance(model, dict) or model.get("features") != NAME:
        raise EdgeCalibError(f"{path}: unknown domain features "
                             f"{model.get('features') if isinstance(model, dict) else model!r}")
    domains = model.get("domains")
    if not (isinstance(domains, list) and domains and all(isinstance(d, str) for d in domains)):
        raise EdgeCalibError(f"{path}: 'domains' must be a non-empty list of names")
    unknown = [d for d in domains if d not in bundle_domains]
    if unknown:
        raise EdgeCalibError(f"{path}: names domain {unknown[0]!r}, which the bundle does not "
                             f"have ({', '.join(bundle_domains)}); rebuild the bundle")
    try:
        weights, bias = np.asarray(model["weights"], float), np.asarray(model["bias"], float)
        mean, std = np.asarray(model["mean"], float), np.asarray(model["std"], float)
    except (KeyError, TypeError, ValueError) as exc:
        raise EdgeCalibError(f"{path}: the domain classifier's weights are unreadable "
                             f"({type(exc).__name__}: {exc})") from None
    if weights.shape != (FEATURES, len(domains)) or bias.shape != (len(domains),) \
            or mean.shape != (FEATURES,) or std.shape != (FEATURES,):
        raise EdgeCalibError(f"{path}: the domain classifier names {len(domains)} domains but "
                             f"its weights are shaped {weights.shape}, bias {bias.shape} (expected "
                             f"({FEATURES}, {len(domains)}) and ({len(domains)},)); rebuild the "
                             "bundle")
    if not all(np.all(np.isfinite(a)) for a in (weights, bias, mean, std)) or np.any(std <= 0):
        raise EdgeCalibError(f"{path}: the domain classifier has non-finite weights or a "
                             "non-positive std; rebuild the bundle")
    return model


class AutoDomain:
    """Votes of the last ``window`` frames; switch when another domain holds >= ``threshold``
    of them (and the window is full)."""

    def __init__(self, model: dict, lo: float, hi: float, window: int = 15, threshold: float = 0.7):
        self.model, self.lo, self.hi = model, lo, hi
        self.domains = model["domains"]
        self.window, self.threshold = window, threshold
        self.votes: collections.deque[int] = collections.deque(maxlen=window)

    def predict(self, x: np.ndarray) -> tuple[str, float]:
        """(domain, probability) for one pre-processed frame (1, C, H, W)."""
        p = predict_logistic(self.model, image_features(x, self.lo, self.hi))[0]
        k = int(p.argmax())
        return self.domains[k], float(p[k])

    def update(self, current: str, predicted: str) -> str | None:
        """Record a vote; return the domain to switch to, or None to stay."""
        self.votes.append(self.domains.index(predicted))
        if len(self.votes) < self.window:
            return None
        counts = np.bincount(np.asarray(self.votes), minlength=len(self.domains))
        best = int(counts.argmax())
        if self.domains[best] != current and counts[best] >= self.threshold * self.window:
            return self.domains[best]
        return None
