"""Cheap image statistics that tell domains apart, and the rule that says a frame fits none
(numpy + OpenCV only; shared by the bundle build and the runtime).

Features (``thumb-colour-v2``): the uint8 frame at the model's input size is shrunk to a
thumbnail of at most ``THUMBNAIL`` pixels on its long side (area averaging by a whole factor
over a subset of the rows: 480x360 -> 60x45), and on it: an 8-bin histogram of each of R, G,
B (levels // 32); in [0, 1], each channel's mean and standard deviation, 8 row and 8 column
means of the grey level (the mean of the channels), the mean grey gradient, the fractions of
grey pixels below 0.1 and above 0.9, the mean saturation (max - min over the channels). 50
numbers, read from the frame the runtime has already resized (no float copy of the whole
frame). A grey model's frames are repeated to three channels.

Open set (novelty): a frame is far from domain k when its distance to its ``K_NEAREST``-th
nearest reference frame of k, in the standardised feature space, exceeds k's radius. The
radius comes from all of the domain's frames by blocked cross-validation: the frames, in file
order (so a block is a stretch of a sequence), are cut into ``FOLDS`` contiguous blocks; each
frame's distance is measured to the references of the other blocks only, and the radius is
``MARGIN`` x the ``PERCENTILE``-th percentile of those distances. No frame is held out, and a
small domain's radius still reflects how far a later stretch of the same place can drift.
"""

from __future__ import annotations

import cv2
import numpy as np

NAME = "thumb-colour-v2"
FEATURES = 50  # 24 histogram bins, 6 channel moments, 16 grey profiles, 4 statistics
THUMBNAIL = 64  # pixels on the thumbnail's long side

# Chosen on training and validation frames only (benchmarks/novelty_selection.py: the most new
# shifts found with at most 3% of a known domain's unseen frames called unknown)
K_NEAREST = 1
FOLDS = 5
PERCENTILE = 90.0
MARGIN = 1.5
MAX_REFERENCES = 600  # per domain, spread evenly over its frames (the vote's cost is bounded)


def thumbnail(frame: np.ndarray) -> np.ndarray:
    """uint8 (H, W, C) -> uint8 (h, w, 3): shrunk by the smallest whole factor f that brings
    the long side to at most THUMBNAIL, averaging areas of every (f // 2)-th row (reading a
    quarter of a 480x360 frame's rows costs a third of the time; the averages barely move)."""
    h, w = frame.shape[:2]
    factor = -(-max(h, w) // THUMBNAIL)
    if factor > 1:
        frame = cv2.resize(frame[::max(1, factor // 2)],
                           (max(8, w // factor), max(8, h // factor)),
                           interpolation=cv2.INTER_AREA)
    if frame.ndim == 2:
        frame = frame[..., None]
    return np.repeat(frame, 3, axis=-1) if frame.shape[-1] == 1 else frame


def frame_features(frames: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, C) RGB or grey frames at the model's input size -> (N, 50) features
    (OpenCV reductions: numpy's over an axis of 3 cost ten times more)."""
    out = np.empty((len(frames), FEATURES), np.float32)
    third = np.full((1, 3), 1 / 3, np.float32)
    for i, frame in enumerate(frames):
        u = thumbnail(frame)
        count = u.shape[0] * u.shape[1]
        hist = [cv2.calcHist([u], [c], None, [8], [0, 256]).ravel() / count for c in range(3)]
        mean, std = (m.ravel() / 255 for m in cv2.meanStdDev(u))
        grey = cv2.transform(u.astype(np.float32), third) * np.float32(1 / 255)
        rows = cv2.resize(grey, (1, 8), interpolation=cv2.INTER_AREA).ravel()
        cols = cv2.resize(grey, (8, 1), interpolation=cv2.INTER_AREA).ravel()
        gradient = np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean()
        r, g, b = cv2.split(u)
        saturation = cv2.subtract(cv2.max(cv2.max(r, g), b), cv2.min(cv2.min(r, g), b))
        out[i] = np.concatenate([*hist, mean, std, rows, cols,
                                 [gradient, (grey < 0.1).mean(), (grey > 0.9).mean(),
                                  cv2.mean(saturation)[0] / 255]])
    return out


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
    w, b = descend_logistic(f, labels, np.zeros((f.shape[1], classes)), np.zeros(classes), 0,
                            steps, lr, l2)
    return {"mean": mean.tolist(), "std": std.tolist(), "weights": w.tolist(), "bias": b.tolist()}


def descend_logistic(z: np.ndarray, labels: np.ndarray, w: np.ndarray, b: np.ndarray,
                     first_free: int, steps: int = 500, lr: float = 0.5, l2: float = 1e-3
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Gradient descent on the loss of ``fit_logistic`` from (w, b), changing only the columns
    (classes) from ``first_free`` on: with the others fixed, how the model ranks those classes
    among themselves is unchanged."""
    w, b = np.array(w, np.float64), np.array(b, np.float64)
    onehot = np.eye(w.shape[1])[labels]
    for _ in range(steps):
        p = softmax(z @ w + b)
        grad = (p - onehot) / len(z)
        w[:, first_free:] -= lr * (z.T @ grad + 2 * l2 * w)[:, first_free:]
        b[first_free:] -= lr * grad.sum(axis=0)[first_free:]
    return w, b


def predict_logistic(model, z: np.ndarray) -> np.ndarray:
    """Class probabilities (N, K) from standardised features ``z``; ``model`` holds arrays or
    lists ``weights`` (F, K) and ``bias`` (K,)."""
    return softmax(z @ np.asarray(model["weights"]) + np.asarray(model["bias"]))


def kth_distance(z: np.ndarray, references: np.ndarray, k: int = K_NEAREST,
                 squared_norms: np.ndarray | None = None) -> np.ndarray:
    """RMS distance from each row of ``z`` (N, F) to its k-th nearest row of ``references``:
    d(z, r) = sqrt(mean_j (z_j - r_j)^2), computed as (|z|^2 + |r|^2 - 2 z.r) / F (one matrix
    product, no (N, M, F) temporary); ``squared_norms``: |r|^2, when kept from an earlier call."""
    if squared_norms is None:
        squared_norms = (references ** 2).sum(axis=1)
    d2 = ((z ** 2).sum(axis=1, keepdims=True) + squared_norms[None] - 2 * z @ references.T)
    d2 = np.maximum(d2, 0.0) / z.shape[1]
    k = min(k, references.shape[0])
    return np.sqrt(np.partition(d2, k - 1, axis=1)[:, k - 1])


def fit_novelty(domains: list[tuple[np.ndarray, np.ndarray]], k: int = K_NEAREST,
                percentile: float = PERCENTILE, margin: float = MARGIN) -> dict:
    """Per domain: (standardised features z (n, F), block order (n,): the frame's position in
    file order, equal for a frame and its renderings). Returns the references (at most
    MAX_REFERENCES, evenly spread), the radii by blocked ``FOLDS``-fold cross-validation (module
    docstring; ``k``, ``percentile`` and ``margin`` default to its constants) and each frame's
    out-of-fold ratio, for the build's report."""
    references, radii, ratios = [], [], []
    for z, order in domains:
        block = (order * FOLDS) // (int(order.max()) + 1)
        distances = np.empty(len(z))
        for b in range(FOLDS):
            inside = block == b
            if inside.any() and (~inside).any():
                distances[inside] = kth_distance(z[inside], z[~inside], k)
            elif inside.any():  # one block only (a single frame): no cross-validation possible
                distances[inside] = 0.0
        radius = max(float(np.percentile(distances, percentile)) * margin, 1e-3)
        spread = np.linspace(0, len(z) - 1, min(len(z), MAX_REFERENCES))
        keep = np.unique(spread.round().astype(int))
        references.append(z[keep].round(5).tolist())
        radii.append(radius)
        ratios.append(distances / radius)
    return {"rule": f"k-nearest ({k}) reference distance over the radius; radius = "
                    f"{margin} x the {percentile:g}th percentile of blocked {FOLDS}-fold "
                    "cross-validated distances (blocks in file order)",
            "k": k, "folds": FOLDS, "percentile": percentile, "margin": margin,
            "references": references, "radii": radii}, ratios


def novelty_ratios(z: np.ndarray, references: list[np.ndarray], radii: np.ndarray,
                   k: int, squared_norms: list[np.ndarray] | None = None) -> np.ndarray:
    """(N, K): each frame's k-th nearest distance to domain k's references over k's radius;
    above 1 for every domain means the frame fits none."""
    norms = squared_norms or [None] * len(references)
    return np.stack([kth_distance(z, r, k, n) for r, n in zip(references, norms)],
                    axis=1) / radii[None]
