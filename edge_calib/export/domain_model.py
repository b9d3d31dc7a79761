"""Train the bundle's small domain classifier (for ``edge-calib run --domain auto``).

Each domain is represented by its own training images: a calibrator's target dataset, and for
an ``identity`` domain the calibrators' source dataset. Every image is used twice: as stored,
and rendered the way a camera stream delivers it (scaled up to a random frame size, JPEG-
compressed at a random quality, scaled back), so that the statistics name the domain of a
frame whatever the resolution and codec of the stream. 20% of each domain is held out to
report how well they name the domain of a single frame, and to set each domain's open-set
radius (a frame outside every radius is ``unknown`` at run time).
"""

from __future__ import annotations

import cv2
import numpy as np

from ..core.errors import EdgeCalibError
from ..core.fileio import write_json_atomic
from ..data import load_dataset
from ..imaging.domain_features import (NAME, fit_logistic, fit_open_set, image_features,
                                       open_set_ratios, predict_logistic)

PER_DOMAIN = 2000
FILE = "domain_classifier.json"


def domain_datasets(calibrators, loaded) -> dict[str, str]:
    sources = {cal.meta.source for cal in loaded.values()} - {None}
    out = {}
    for domain, _ in calibrators:
        if domain in loaded:
            out[domain] = loaded[domain].meta.target
            if not out[domain]:
                raise EdgeCalibError(f"domain {domain!r}: no target images recorded to learn it "
                                     "for --domain auto; give DOMAIN=histogram:TARGET, or "
                                     "--no-auto-domain")
        elif len(sources) == 1:
            out[domain] = next(iter(sources))
        else:
            raise EdgeCalibError(f"cannot tell which images represent the identity domain "
                                 f"{domain!r} (calibrators have sources {sorted(sources)})")
    return out


def render_like_a_stream(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 (N,H,W,C) images as a camera stream would carry them: each enlarged to a random
    frame size (1.5x to 8x), with a random exposure (gain 0.7-1.1, offset -10..25 levels),
    defocus (Gaussian sigma 0-1.5 px of the original) and sensor noise (sigma 0-8 levels),
    JPEG-encoded at quality 40-95 and decoded, then scaled back."""
    out = np.empty_like(images)
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        scale = rng.uniform(1.5, 8.0) * min(1.0, 640 / (8 * max(h, w)))  # at most ~640 px
        frame = cv2.resize(img, (int(w * scale), int(h * scale)), interpolation=cv2.INTER_LINEAR)
        sigma = rng.uniform(0.0, 1.5) * scale
        if sigma > 0.3:
            frame = cv2.GaussianBlur(frame, (0, 0), sigma)
        frame = frame.astype(np.float32) * rng.uniform(0.7, 1.1) + rng.uniform(-10, 25)
        frame += rng.normal(0.0, rng.uniform(0, 8), frame.shape)
        frame = np.clip(frame, 0, 255).astype(np.uint8)
        ok, jpg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(40, 96))])
        frame = cv2.imdecode(jpg, cv2.IMREAD_UNCHANGED)
        back = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
        out[i] = back.reshape(img.shape)
    return out


def bundle_domain_classifier(data_root, seed: int = 0):
    """A callback for ``build_bundle``: writes the model into the bundle, returns its entry."""

    def build(folder, spec, calibrators, loaded) -> dict:
        names = [d for d, _ in calibrators]
        datasets = domain_datasets(calibrators, loaded)
        rng = np.random.default_rng(seed)
        fit, holdout = [], []
        for k, domain in enumerate(names):
            ds = load_dataset(datasets[domain], "train", data_root, image_size=(spec.height, spec.width))
            images = ds.images[rng.permutation(len(ds))[:PER_DOMAIN]]
            cut = int(0.8 * len(images))
            for part, target in ((images[:cut], fit), (images[cut:], holdout)):
                both = np.concatenate([part, render_like_a_stream(part, rng)])
                f = image_features(spec.preprocess(both), spec.lo[0], spec.hi[0])
                target.append((f, np.full(len(f), k)))
        model = fit_logistic(np.concatenate([f for f, _ in fit]),
                             np.concatenate([y for _, y in fit]), len(names))
        hx = np.concatenate([h[0] for h in holdout])
        hy = np.concatenate([h[1] for h in holdout])
        acc = float((predict_logistic(model, hx).argmax(1) == hy).mean() * 100)
        model["open_set"] = fit_open_set(model, [f for f, _ in fit], [f for f, _ in holdout])
        known = float((open_set_ratios(model, hx).min(axis=1) <= 1).mean() * 100)
        write_json_atomic(folder / FILE, {"features": NAME, "domains": names, **model})
        return {"file": FILE, "features": NAME, "domains": names,
                "trained_on": datasets, "holdout_frames": int(len(hy)),
                "holdout_accuracy": round(acc, 2), "holdout_known": round(known, 2)}

    return build

