"""Train the bundle's small domain classifier (for ``edge-calib run --domain auto``).

Each domain is represented by its own training images: a calibrator's target dataset, and for
an ``identity`` domain the calibrators' source dataset. Every image is used twice: as stored,
and rendered the way a camera stream delivers it (scaled up to a random frame size, JPEG-
compressed at a random quality, scaled back), so that the statistics name the domain of a
frame whatever the resolution and codec of the stream. 20% of each domain is held out to
report how well they name the domain of a single frame; each domain's open-set radius comes
from all of its frames (``imaging.domain_features``: a frame outside every radius is
``unknown`` at run time).
"""

from __future__ import annotations

import cv2
import numpy as np

from ..core.errors import EdgeCalibError
from ..core.progress import echo_err
from ..core.fileio import write_json_atomic
from ..data import load_dataset
from ..imaging.domain_features import (NAME, descend_logistic, fit_logistic, fit_novelty,
                                       frame_features, predict_logistic)

PER_DOMAIN = 2000
FILE = "domain_classifier.json"


def domain_datasets(calibrators, loaded, model_source: str | None = None) -> dict[str, str]:
    """Each domain's training images: a calibrator's target; for an identity domain the
    calibrators' source, or with no calibrators the frozen model's own source dataset."""
    sources = {cal.meta.source for cal in loaded.values()} - {None}
    if not sources and model_source:
        sources = {model_source}
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


def render_like_a_stream(images: np.ndarray, rng: np.random.Generator,
                         camera: bool = True) -> np.ndarray:
    """uint8 (N,H,W,C) images as a camera stream would carry them: each enlarged to a random
    frame size (1.5x to 8x), with sensor noise (sigma 0-4 levels), JPEG-encoded at quality
    40-95 and decoded, then scaled back. ``camera`` also varies what another camera of the same
    domain would: exposure (gain 0.7-1.1, offset -10..25 levels), defocus (Gaussian sigma 0-1.5
    px of the original) and noise up to 8 levels."""
    out = np.empty_like(images)
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        scale = rng.uniform(1.5, 8.0) * min(1.0, 640 / (8 * max(h, w)))  # at most ~640 px
        frame = cv2.resize(img, (int(w * scale), int(h * scale)), interpolation=cv2.INTER_LINEAR)
        frame = frame.astype(np.float32)
        if camera:
            sigma = rng.uniform(0.0, 1.5) * scale
            if sigma > 0.3:
                frame = cv2.GaussianBlur(frame, (0, 0), sigma)
            frame = frame * rng.uniform(0.7, 1.1) + rng.uniform(-10, 25)
        frame += rng.normal(0.0, rng.uniform(0, 8 if camera else 4), frame.shape)
        frame = np.clip(frame, 0, 255).astype(np.uint8)
        ok, jpg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(40, 96))])
        frame = cv2.imdecode(jpg, cv2.IMREAD_UNCHANGED)
        back = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
        out[i] = back.reshape(img.shape)
    return out


def fit_domain_model(domains: list[np.ndarray], rng: np.random.Generator) -> tuple[dict, dict]:
    """uint8 frames per domain (at the model's input size, in file order) -> the domain
    classifier's fitted arrays and a report. The classifier (logistic, for naming the domain)
    learns from 80% of each domain's frames, as stored and rendered with another camera's
    exposure, and is scored on the other 20%; the novelty references and radii use every frame,
    as stored and rendered through a stream's codec only (``fit_novelty``)."""
    features, labels, held_out, novelty_frames = [], [], [], []
    for k, frames in enumerate(domains):
        stored = frame_features(frames)  # once: the fit, held-out and novelty sets share them
        split = rng.permutation(len(frames))
        cut = max(1, int(0.8 * len(frames)))
        fit, test = np.sort(split[:cut]), np.sort(split[cut:])
        f = np.concatenate([stored[fit], frame_features(render_like_a_stream(frames[fit], rng))])
        features.append(f)
        labels.append(np.full(len(f), k))
        if len(test):
            rendered = frame_features(render_like_a_stream(frames[test], rng))
            held_out.append((np.concatenate([stored[test], rendered]), k))
        codec = frame_features(render_like_a_stream(frames, rng, camera=False))
        novelty_frames.append((np.concatenate([stored, codec]), np.tile(np.arange(len(frames)), 2)))
    model = fit_logistic(np.concatenate(features), np.concatenate(labels), len(domains))
    mean, std = np.asarray(model["mean"]), np.asarray(model["std"])
    hx = np.concatenate([f for f, _ in held_out])
    hy = np.concatenate([np.full(len(f), k) for f, k in held_out])
    accuracy = float((predict_logistic(model, (hx - mean) / std).argmax(1) == hy).mean() * 100)
    novelty, ratios = fit_novelty([((f - mean) / std, order) for f, order in novelty_frames])
    known = float((np.concatenate(ratios) <= 1).mean() * 100)
    return {**model, "open_set": novelty}, {"holdout_frames": int(len(hy)),
                                            "holdout_accuracy": round(accuracy, 2),
                                            "holdout_known": round(known, 2),
                                            "novelty": novelty["rule"]}


def add_domain(model: dict, frames: np.ndarray, rng: np.random.Generator) -> tuple[dict, dict]:
    """A bundle's fitted domain classifier (the arrays of ``fit_domain_model``) with one more
    domain learnt from its uint8 frames (model input size, file order), the known domains left
    as they are: the feature scaling, their weights, references and radii are kept (so their
    radii still hold), the new domain's references and radius are fitted as ``fit_novelty``
    does, and only the new class's weights are learnt (``descend_logistic``), from the known
    domains' stored references and 80% of the new frames (as stored and rendered with another
    camera's exposure). Report: the new domain's held-out 20% (stored and rendered) and the
    known domains' references, each named by the refitted model."""
    mean, std = np.asarray(model["mean"]), np.asarray(model["std"])
    old = [np.asarray(r) for r in model["open_set"]["references"]]
    k_new = len(old)
    stored = frame_features(frames)
    split = rng.permutation(len(frames))
    cut = max(1, int(0.8 * len(frames)))
    fit, test = np.sort(split[:cut]), np.sort(split[cut:])
    new_fit = np.concatenate([stored[fit], frame_features(render_like_a_stream(frames[fit], rng))])
    z = np.concatenate([*old, (new_fit - mean) / std])
    labels = np.concatenate([np.full(len(r), k) for k, r in enumerate(old)]
                            + [np.full(len(new_fit), k_new)])
    w = np.concatenate([np.asarray(model["weights"]), np.zeros((len(mean), 1))], axis=1)
    b = np.concatenate([np.asarray(model["bias"]), [0.0]])
    w, b = descend_logistic(z, labels, w, b, k_new)
    codec = frame_features(render_like_a_stream(frames, rng, camera=False))
    novelty, ratios = fit_novelty([((np.concatenate([stored, codec]) - mean) / std,
                                    np.tile(np.arange(len(frames)), 2))])
    held = [(r, k) for k, r in enumerate(old)]
    if len(test):
        rendered = frame_features(render_like_a_stream(frames[test], rng))
        held.append(((np.concatenate([stored[test], rendered]) - mean) / std, k_new))
    hx = np.concatenate([f for f, _ in held])
    hy = np.concatenate([np.full(len(f), k) for f, k in held])
    named = predict_logistic({"weights": w, "bias": b}, hx).argmax(1) == hy
    open_set = dict(model["open_set"])
    open_set["references"] = [*model["open_set"]["references"], *novelty["references"]]
    open_set["radii"] = [*model["open_set"]["radii"], *novelty["radii"]]
    report = {"holdout_frames": int(len(hy)), "holdout_accuracy": round(float(named.mean()) * 100,
                                                                      2),
              "new_domain_named": round(float(named[hy == k_new].mean()) * 100, 2)
              if (hy == k_new).any() else None,
              "new_domain_known": round(float((ratios[0] <= 1).mean()) * 100, 2)}
    return {**model, "weights": w.tolist(), "bias": b.tolist(), "open_set": open_set}, report


def bundle_domain_classifier(data_root, seed: int = 0):
    """A callback for ``build_bundle``: writes the model into the bundle, returns its entry."""

    def build(folder, spec, calibrators, loaded, model_source=None) -> dict | None:
        names = [d for d, _ in calibrators]
        alone = len(names) == 1  # open set only: best effort, never a download
        try:
            datasets = domain_datasets(calibrators, loaded, model_source)
            rng = np.random.default_rng(seed)
            frames = []
            for domain in names:
                ds = load_dataset(datasets[domain], "train", data_root, download=not alone,
                                  image_size=(spec.height, spec.width))
                pick = np.sort(rng.permutation(len(ds))[:PER_DOMAIN])  # file order: CV blocks
                frames.append(spec.resize_uint8(ds.images[pick]))
        except EdgeCalibError as exc:
            if not alone:
                raise
            echo_err(f"no auto-domain model for the one domain {names[0]!r} ({exc})")
            return None
        model, report = fit_domain_model(frames, rng)
        write_json_atomic(folder / FILE, {"features": NAME, "domains": names, **model})
        return {"file": FILE, "features": NAME, "domains": names, "trained_on": datasets,
                **report}

    return build
