"""Train the bundle's small domain classifier (for ``edge-calib run --domain auto``).

Each domain is represented by its own training images: a calibrator's target dataset, and for
an ``identity`` domain the calibrators' source dataset. 20% of each domain is held out to
report how well the statistics name the domain of a single frame.
"""

from __future__ import annotations

import numpy as np

from ..data import load_dataset
from ..domain_features import NAME, fit_logistic, image_features, predict_logistic
from ..errors import EdgeCalibError
from ..fileio import write_json_atomic

PER_DOMAIN = 2000
FILE = "domain_classifier.json"


def domain_datasets(calibrators, loaded) -> dict[str, str]:
    sources = {cal.meta.get("source") for cal in loaded.values()} - {None}
    out = {}
    for domain, _ in calibrators:
        if domain in loaded:
            out[domain] = loaded[domain].meta["target"]
        elif len(sources) == 1:
            out[domain] = next(iter(sources))
        else:
            raise EdgeCalibError(f"cannot tell which images represent the identity domain "
                                 f"{domain!r} (calibrators have sources {sorted(sources)})")
    return out


def bundle_domain_classifier(data_root, seed: int = 0):
    """A callback for ``build_bundle``: writes the model into the bundle, returns its entry."""

    def build(folder, spec, calibrators, loaded) -> dict:
        names = [d for d, _ in calibrators]
        datasets = domain_datasets(calibrators, loaded)
        rng = np.random.default_rng(seed)
        feats, labels, holdout = [], [], []
        for k, domain in enumerate(names):
            ds = load_dataset(datasets[domain], "train", data_root, image_size=(spec.height, spec.width))
            idx = rng.permutation(len(ds))[:PER_DOMAIN]
            f = image_features(spec.preprocess(ds.images[idx]), spec.lo[0], spec.hi[0])
            cut = int(0.8 * len(f))
            feats.append(f[:cut])
            labels.append(np.full(cut, k))
            holdout.append((f[cut:], np.full(len(f) - cut, k)))
        model = fit_logistic(np.concatenate(feats), np.concatenate(labels), len(names))
        hx = np.concatenate([h[0] for h in holdout])
        hy = np.concatenate([h[1] for h in holdout])
        acc = float((predict_logistic(model, hx).argmax(1) == hy).mean() * 100)
        write_json_atomic(folder / FILE, {"features": NAME, "domains": names, **model})
        return {"file": FILE, "features": NAME, "domains": names,
                "trained_on": datasets, "holdout_frames": int(len(hy)),
                "holdout_accuracy": round(acc, 2)}

    return build

