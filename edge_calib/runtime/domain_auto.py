"""``--domain auto``: name the domain of each frame with the bundle's small domain classifier
and switch only when a sliding window agrees (hysteresis), so an odd frame does not flip it.

Open set: a frame outside every domain's radius (``imaging.domain_features``: its k-th nearest
reference frame of each domain is further than that domain's radius) votes ``unknown``;
when ``unknown`` wins the window, the frozen model runs alone (the identity calibrator: no
domain's calibrator was trained for such frames), or after histogram matching (``run
--unknown histogram``, ``controller.unknown_fallback``). The run starts on the first
frames' vote: until the window is full the majority of the votes so far decides. A domain
classifier without open-set references is closed-set (never ``unknown``); one built on another
release's features is refused in one line.
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field

import numpy as np

from ..core.errors import EdgeCalibError
from ..imaging.domain_features import (FEATURES, NAME, frame_features, novelty_ratios,
                                       predict_logistic)

UNKNOWN = "unknown"  # a frame that fits none of the bundle's domains


@dataclass(frozen=True)
class DomainModel:
    """The bundle's domain classifier as arrays, checked once at load: the feature scaling,
    the logistic classifier's weights (F, K) and bias (K,), and, for the open set, each
    domain's reference frames (standardised features) and radius."""

    domains: list[str]
    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray
    bias: np.ndarray
    references: list[np.ndarray] | None = None
    radii: np.ndarray | None = None
    k: int = 1
    squared_norms: list[np.ndarray] | None = field(init=False)  # |r|^2 of each reference

    def __post_init__(self):  # derived once here (frozen), for every frame's distances
        object.__setattr__(self, "squared_norms", None if self.references is None else
                           [(r ** 2).sum(axis=1) for r in self.references])

    def standardise(self, features: np.ndarray) -> np.ndarray:
        return (features - self.mean) / self.std

    def probabilities(self, z: np.ndarray) -> np.ndarray:
        return predict_logistic({"weights": self.weights, "bias": self.bias}, z)

    def ratios(self, z: np.ndarray) -> np.ndarray:
        """(N, K) novelty ratios: above 1 for every domain means the frame fits none."""
        return novelty_ratios(z, self.references, self.radii, self.k, self.squared_norms)


def load_domain_model(path, bundle_domains: list[str]) -> DomainModel:
    """The bundle's domain classifier, refused in one line unless its features are this
    release's and its domain names, weights, bias, feature scaling and open-set references
    agree with each other and name only the bundle's domains."""
    try:
        model = json.loads(open(path).read())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgeCalibError(f"{path}: cannot read the domain classifier ({exc})") from None
    features = model.get("features") if isinstance(model, dict) else model
    if features != NAME:
        raise EdgeCalibError(f"{path}: the domain classifier uses features {features!r}, this "
                             f"release reads {NAME!r}; rebuild the bundle with edge-calib export "
                             "(or run it with a fixed --domain)")
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
    loaded = DomainModel(domains, mean, std, weights, bias)
    if model.get("open_set") is None:
        return loaded
    references, radii, k = _open_set(path, model["open_set"], len(domains))
    return DomainModel(domains, mean, std, weights, bias, references, radii, k)


def _open_set(path, open_set, domains: int) -> tuple[list[np.ndarray], np.ndarray, int]:
    try:
        references = [np.asarray(r, float) for r in open_set["references"]]
        radii, k = np.asarray(open_set["radii"], float), open_set["k"]
    except (KeyError, TypeError, ValueError) as exc:
        raise EdgeCalibError(f"{path}: the domain classifier's open-set references are "
                             f"unreadable ({type(exc).__name__}: {exc})") from None
    if len(references) != domains or radii.shape != (domains,) \
            or any(r.ndim != 2 or r.shape[0] == 0 or r.shape[1] != FEATURES for r in references):
        raise EdgeCalibError(f"{path}: the open set has {len(references)} reference sets shaped "
                             f"{[r.shape for r in references]} and radii shaped {radii.shape} "
                             f"(expected {domains} sets of (n, {FEATURES}) and ({domains},)); "
                             "rebuild the bundle")
    if not (isinstance(k, int) and k >= 1) or not all(np.all(np.isfinite(r)) for r in references) \
            or not np.all(np.isfinite(radii)) or np.any(radii <= 0):
        raise EdgeCalibError(f"{path}: the open-set references and radii must be finite, the "
                             "radii and k positive; rebuild the bundle")
    return references, radii, k


class AutoDomain:
    """Votes of the last ``window`` frames (a domain or ``unknown``): switch when another one
    holds >= ``threshold`` of a full window; before the window is full, follow the majority of
    the votes so far (the run starts on the first frames' vote, not on the bundle's first
    domain)."""

    def __init__(self, model: DomainModel, window: int = 15, threshold: float = 0.7,
                 radius_scale: float = 1.0):
        self.model, self.radius_scale = model, radius_scale
        self.domains = model.domains
        self.choices = [*self.domains, UNKNOWN]
        self.open_set = model.references is not None
        self.window, self.threshold = window, threshold
        self.votes: collections.deque[int] = collections.deque(maxlen=window)
        self.last_features: np.ndarray | None = None  # the last frame's raw features (collect)

    def predict(self, frame: np.ndarray) -> dict:
        """One uint8 frame (1, H, W, C) at the model's input size -> {"predicted": domain or
        unknown, "p": the classifier's probability of its best domain, "fit": the smallest
        novelty ratio (open set; <= ``radius_scale`` inside a domain's radius)}."""
        self.last_features = frame_features(frame)[0]
        z = self.model.standardise(self.last_features[None])
        p = self.model.probabilities(z)[0]
        k = int(p.argmax())
        out = {"predicted": self.domains[k], "p": float(p[k])}
        if self.open_set:
            fit = float(self.model.ratios(z)[0].min())
            out["fit"] = fit
            if fit > self.radius_scale:
                out["predicted"] = UNKNOWN
        return out

    def carry_votes(self, previous: "AutoDomain") -> None:
        """Start from ``previous``'s window (a reloaded bundle): each vote kept by its domain's
        name, a domain this model does not have as ``unknown``."""
        for k in previous.votes:
            name = previous.choices[k]
            self.votes.append(self.choices.index(name if name in self.choices else UNKNOWN))

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
