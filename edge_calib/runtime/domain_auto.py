"""``--domain auto``: name the domain of each frame with the bundle's small domain classifier
and switch only when a sliding window agrees (hysteresis), so an odd frame does not flip it."""

from __future__ import annotations

import collections
import json

import numpy as np

from ..domain_features import NAME, image_features, predict_logistic
from ..errors import EdgeCalibError


def load_domain_model(path) -> dict:
    try:
        model = json.loads(open(path).read())
    except (OSError, json.JSONDecodeError) as exc:
        raise EdgeCalibError(f"{path}: cannot read the domain classifier ({exc})") from None
    if model.get("features") != NAME:
        raise EdgeCalibError(f"{path}: unknown domain features {model.get('features')!r}")
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
