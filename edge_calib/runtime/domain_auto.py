"""``--domain auto``: name the domain of each frame with the bundle's small domain classifier
and switch only when a sliding window agrees (hysteresis), so an odd frame does not flip it.

Open set: a frame outside every domain's radius (``imaging.domain_features.open_set_ratios``)
votes ``unknown``; when ``unknown`` wins the window, the frozen model runs alone (the identity
calibrator: no domain's calibrator was trained for such frames). The run starts on the first
frames' vote: until the window is full the majority of the votes so far decides. A bundle
built before the open-set radii were recorded is closed-set (never ``unknown``).
"""

from __future__ import annotations

import collections
import json

import numpy as np

from ..core.errors import EdgeCalibError
from ..imaging.domain_features import (FEATURES, NAME, image_features, open_set_ratios,
                                       predict_logistic)

UNKNOWN = "unknown"  # a frame that fits none of the bundle's domains


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
    if model.get("open_set") is not None:
        _check_open_set(path, model["open_set"], len(domains))
    return model


def _check_open_set(path, open_set, domains: int) -> None:
    try:
        centres, spreads = np.asarray(open_set["centres"], float), np.asarray(open_set["spreads"], float)
        radii = np.asarray(open_set["radii"], float)
    except (KeyError, TypeError, ValueError) as exc:
        raise EdgeCalibError(f"{path}: the domain classifier's open-set radii are unreadable "
                             f"({type(exc).__name__}: {exc})") from None
    if centres.shape != (domains, FEATURES) or spreads.shape != (domains, FEATURES) \
            or radii.shape != (domains,):
        raise EdgeCalibError(f"{path}: the open-set centres, spreads and radii are shaped "
                             f"{centres.shape}, {spreads.shape}, {radii.shape} (expected "
                             f"({domains}, {FEATURES}) twice and ({domains},)); rebuild the bundle")
    if not all(np.all(np.isfinite(a)) for a in (centres, spreads, radii)) \
            or np.any(spreads <= 0) or np.any(radii <= 0):
        raise EdgeCalibError(f"{path}: the open-set spreads and radii must be finite and "
                             "positive; rebuild the bundle")


class AutoDomain:
    """Votes of the last ``window`` frames (a domain or ``unknown``): switch when another one
    holds >= ``threshold`` of a full window; before the window is full, follow the majority of
    the votes so far (the run starts on the first frames' vote, not on the bundle's first
    domain)."""

    def __init__(self, model: dict, lo: float, hi: float, window: int = 15, threshold: float = 0.7,
                 radius_scale: float = 1.0):
        self.model, self.lo, self.hi, self.radius_scale = model, lo, hi, radius_scale
        self.domains = model["domains"]
        self.choices = [*self.domains, UNKNOWN]
        self.open_set = model.get("open_set") is not None
        self.window, self.threshold = window, threshold
        self.votes: collections.deque[int] = collections.deque(maxlen=window)

    def predict(self, x: np.ndarray) -> dict:
        """One pre-processed frame (1, C, H, W) -> {"predicted": domain or unknown, "p": the
        classifier's probability of its best domain, "fit": d/r of the nearest domain (open
        set; <= ``radius_scale`` inside a radius)}."""
        f = image_features(x, self.lo, self.hi)
        p = predict_logistic(self.model, f)[0]
        k = int(p.argmax())
        out = {"predicted": self.domains[k], "p": float(p[k])}
        if self.open_set:
            fit = float(open_set_ratios(self.model, f)[0].min())
            out["fit"] = fit
            if fit > self.radius_scale:
                out["predicted"] = UNKNOWN
        return out

    def update(self, current: str | None, predicted: str) -> str | None:
        """Record a vote; return the domain (or ``unknown``) to switch to, or None to stay."""
        self.votes.append(self.choices.index(predicted))
        counts = np.bincount(np.asarray(self.votes), minlength=len(self.choices))
        best = int(counts.argmax())
        if self.choices[best] == current:
            return None
        if len(self.votes) < self.window:
            # filling: the majority so far (a tie keeps the current choice)
            held = counts[self.choices.index(current)] if current in self.choices else -1
            return self.choices[best] if counts[best] > held else None
        if counts[best] >= self.threshold * self.window:
            return self.choices[best]
        return None
