"""``edge-calib eval --deploy``: accuracy through the bundle's engines (device side, no torch)."""

from __future__ import annotations

import numpy as np

from .bundle import open_bundle
from .data import load_dataset
from .engines import open_engines
from .errors import EdgeCalibError


def evaluate_bundle(deploy, domain, dataset, split, data_root, batch_size=512, max_samples=None,
                    fused=False) -> dict:
    bundle = open_bundle(deploy)
    domain = domain or bundle.default_domain
    bundle.domain(domain)  # unknown names list the bundle's domains
    spec = bundle.spec
    data = load_dataset(dataset, split, data_root, image_size=(spec.height, spec.width))
    data = data.subset(max_samples)
    if data.labels is None:
        raise EdgeCalibError(f"{dataset} has no labels: accuracy needs a labelled dataset")
    predictions = []
    with open_engines(bundle, "onnxruntime", fused=fused) as engines:
        for start in range(0, len(data), batch_size):
            x = spec.preprocess(data.images[start:start + batch_size])
            predictions.append(engines.infer(domain, x)[0].argmax(1))
    accuracy = float((np.concatenate(predictions) == data.labels).mean() * 100.0)
    clf = bundle.manifest.classifier
    cal = bundle.calibrator(domain)
    return {"dataset": dataset, "split": split, "n": len(data), "accuracy": round(accuracy, 3),
            "backend": "onnxruntime", "graph": "fused" if fused else "calibrator+classifier",
            "deploy": str(deploy), "domain": domain, "precision": clf.precision,
            "classifier_fingerprint": clf.fingerprint, "classifier_params": clf.params,
            "calibrator_params": None if cal is None else cal.params,
            "overhead_params_pct": None if cal is None
            else round(100.0 * cal.params / clf.params, 3)}
