"""Accuracy of a classifier, with or without a calibrator in front, exactly as deployed."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import EdgeCalibError
from .tensors import DomainData


@torch.no_grad()
def predict(classifier: torch.nn.Module, data: DomainData, calibrator: torch.nn.Module | None = None,
            batch_size: int = 512, device="cpu") -> np.ndarray:
    """Top-1 predictions (N,) of classifier(calibrator(x)) with both modules in eval mode."""
    classifier.eval()
    if calibrator is not None:
        calibrator.eval()
    out = []
    for start in range(0, len(data), batch_size):
        x = data.batch(np.arange(start, min(start + batch_size, len(data))), device)
        if calibrator is not None:
            x = calibrator(x)
        out.append(classifier(x).argmax(1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def accuracy(classifier, data: DomainData, calibrator=None, batch_size=512, device="cpu") -> float:
    """Top-1 accuracy in percent."""
    if data.labels is None:
        raise EdgeCalibError(f"{data.name} has no labels: accuracy needs a labelled dataset")
    pred = predict(classifier, data, calibrator, batch_size, device)
    return float((pred == data.labels).mean() * 100.0)
