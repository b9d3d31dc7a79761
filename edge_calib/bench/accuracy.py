"""``edge-calib eval --deploy``: scores through the bundle's engines (device side, no torch):
top-1 accuracy, or for a segmenter mIoU etc. with the logits upsampled (bilinear) to the
labels' resolution, as the workstation's evaluation does."""

from __future__ import annotations

import cv2
import numpy as np

from ..core.errors import EdgeCalibError
from ..core.scoring import LabelMap, Scorer
from ..data import load_dataset
from ..deploy.bundle import open_bundle
from ..engines import open_engines


def upsample_logits(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, K, h, w) -> (N, K, H, W), bilinear with half-pixel centres (torch's
    align_corners=False)."""
    if logits.shape[-2:] == tuple(size):
        return logits
    return np.stack([np.stack([cv2.resize(channel, (size[1], size[0]),
                                          interpolation=cv2.INTER_LINEAR)
                               for channel in frame]) for frame in logits])


def evaluate_bundle(deploy, domain, dataset, split, data_root, batch_size=512, max_samples=None,
                    fused=False, label_map=None, unknown=None, ignore_index=None) -> dict:
    """``unknown`` (``model`` or ``histogram``): score the frames as the runtime runs a frame
    voted ``unknown`` under ``run --unknown RULE`` (the frozen model alone, or after histogram
    matching to the bundle's source pixels), instead of a domain's calibrator."""
    from ..runtime.controller import unknown_fallback

    bundle = open_bundle(deploy)
    mapping = LabelMap.load(label_map, bundle.labels) if label_map else None
    if unknown is not None and domain is not None:
        raise EdgeCalibError("--unknown scores frames as the runtime runs unknown ones: give it "
                             "or --domain, not both")
    fallback = None if unknown is None else unknown_fallback(bundle, unknown)
    domain = None if unknown is not None else domain or bundle.default_domain
    if domain is not None:
        bundle.domain(domain)  # unknown names list the bundle's domains
    spec = bundle.spec
    data = load_dataset(dataset, split, data_root, image_size=(spec.height, spec.width))
    data = data.subset(max_samples)
    if ignore_index is not None:
        data.void = ignore_index
    if data.labels is None:
        raise EdgeCalibError(f"{dataset} has no labels: scores need a labelled dataset")
    segmenting = bundle.task == "segmentation"
    if segmenting != (data.labels.ndim == 3):
        raise EdgeCalibError(f"{dataset} has {'masks' if data.labels.ndim == 3 else 'labels'}, "
                             f"but this bundle's model does {bundle.task}")
    scorer = Scorer(bundle.task, bundle.labels, data.void, mapping, dataset)
    step = 8 if segmenting else batch_size
    with open_engines(bundle, "onnxruntime", fused=fused) as engines:
        for start in range(0, len(data), step):
            frames = data.images[start:start + step]
            if fallback is not None:
                frames = fallback(spec.resize_uint8(frames))
            x = spec.preprocess(frames)
            logits = engines.infer(domain, x)[0]
            truth = data.labels[start:start + step]
            if segmenting:
                logits = upsample_logits(logits, truth.shape[1:])
            scorer.add(logits.argmax(1), truth)
    score = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in scorer.scores().items()}
    clf = bundle.manifest.classifier
    cal = None if domain is None else bundle.calibrator(domain)
    return {"dataset": dataset, "split": split, "n": len(data), **score,
            "backend": "onnxruntime", "graph": "fused" if fused else "calibrator+classifier",
            "deploy": str(deploy), "domain": domain, "unknown": unknown,
            "precision": clf.precision,
            "classifier_fingerprint": clf.fingerprint, "classifier_params": clf.params,
            "calibrator_params": None if cal is None else cal.params,
            "overhead_params_pct": None if cal is None
            else round(100.0 * cal.params / clf.params, 3)}
