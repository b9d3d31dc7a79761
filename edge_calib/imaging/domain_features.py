"""Cheap image statistics that tell domains apart (numpy only; shared by build and runtime).

For the ``--domain auto`` classifier: on the normalised classifier input, converted to grey,
a 16-bin intensity histogram, 8-bin row and column mean profiles, mean, standard deviation,
mean gradient magnitude and the fraction of pixels near the darkest and brightest values.

Open set: each domain also keeps the centre and spread of its frames' standardised features and
a radius (a high percentile of its held-out frames' distances), so that a frame far from every
domain is named ``unknown`` rather than forced into the nearest one.
"""

from __future__ import annotations

import numpy as np

NAME = "grey-stats-v1"
FEATURES = 37  # per frame: a 16-bin histogram, 8 row and 8 column means, 5 statistics


def image_features(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """x: float32 (N, C, H, W) normalised input in [lo, hi] -> (N, 37) features."""
    grey = x.mean(axis=1)
    u = (grey - lo) / (hi - lo)  # [0, 1]
    n, h, w = u.shape
    hist = np.stack([np.histogram(img, bins=16, range=(0.0, 1.0))[0] for img in u]) / (h * w)
    rows = u.mean(axis=2)
    cols = u.mean(axis=1)
    rows8 = rows[:, : h - h % 8].reshape(n, 8, -1).mean(axis=2)
    cols8 = cols[:, : w - w % 8].reshape(n, 8, -1).mean(axis=2)
    gy, gx = np.abs(np.diff(u, axis=1)).mean(axis=(1, 2)), np.abs(np.diff(u, axis=2)).mean(axis=(1, 2))
    stats = np.stack([u.mean(axis=(1, 2)), u.std(axis=(1, 2)), gy + gx,
                      (u < 0.1).mean(axis=(1, 2)), (u > 0.9).mean(axis=(1, 2))], axis=1)
    return np.concatenate([hist, rows8, cols8, stats], axis=1).astype(np.float32)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_logistic(features: np.ndarray, labels: np.ndarray, classes: int, steps: int = 500,
                 lr: float = 0.5, l2: float = 1e-3) -> dict:
    """Multinomial logistic regression on standardised features, full-batch gradient descent:
    minimise -(1/n) sum_i log softmax(W f_i + b)_{y_i} + l2 ||W||^2."""
    mean, std = features.mean(axis=0), features.std(axis=0) + 1e-6
    f = (features - mean) / std
    w = np.zeros((f.shape[1], classes), np.float64)
    b = np.zeros(classes, np.float64)
    onehot = np.eye(classes)[labels]
    for _ in range(steps):
        p = softmax(f @ w + b)
        grad = (p - onehot) / len(f)
        w -= lr * (f.T @ grad + 2 * l2 * w)
        b -= lr * grad.sum(axis=0)
    return {"mean": mean.tolist(), "std": std.tolist(), "weights": w.tolist(), "bias": b.tolist()}


def predict_logistic(model: dict, features: np.ndarray) -> np.ndarray:
    """Class probabilities (N, K)."""
    f = (features - np.asarray(model["mean"])) / np.asarray(model["std"])
    return softmax(f @ np.asarray(model["weights"]) + np.asarray(model["bias"]))


SPREAD_FLOOR = 0.1  # in global standard deviations: a feature a domain never varies still counts
OPEN_SET_PERCENTILE = 99.0
OPEN_SET_MARGIN = 1.1


def _standardise(model: dict, features: np.ndarray) -> np.ndarray:
    return (features - np.asarray(model["mean"])) / np.asarray(model["std"])


def fit_open_set(model: dict, fit: list[np.ndarray], holdout: list[np.ndarray]) -> dict:
    """Per domain k, on the standardised features z: centre c_k and spread s_k of its fitting
    frames (s_k floored at SPREAD_FLOOR), and radius r_k = OPEN_SET_MARGIN x the
    OPEN_SET_PERCENTILE-th percentile of d_k over its held-out frames, where
    d_k(z) = sqrt(mean_j ((z_j - c_kj) / s_kj)^2)."""
    centres, spreads, radii = [], [], []
    for f, h in zip(fit, holdout):
        z = _standardise(model, f)
        c, s = z.mean(axis=0), np.maximum(z.std(axis=0), SPREAD_FLOOR)
        d = np.sqrt((((_standardise(model, h) - c) / s) ** 2).mean(axis=1))
        centres.append(c.tolist())
        spreads.append(s.tolist())
        radii.append(float(np.percentile(d, OPEN_SET_PERCENTILE) * OPEN_SET_MARGIN))
    return {"centres": centres, "spreads": spreads, "radii": radii,
            "percentile": OPEN_SET_PERCENTILE, "margin": OPEN_SET_MARGIN}


def open_set_ratios(model: dict, features: np.ndarray) -> np.ndarray:
    """d_k / r_k for every frame and domain (N, K): above 1 for every k means no domain fits."""
    z = _standardise(model, features)
    open_set = model["open_set"]
    c, s = np.asarray(open_set["centres"]), np.asarray(open_set["spreads"])
    d = np.sqrt((((z[:, None, :] - c[None]) / s[None]) ** 2).mean(axis=2))
    return d / np.asarray(open_set["radii"])[None]
