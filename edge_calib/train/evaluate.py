"""Scores of a frozen model, with or without a calibrator in front, exactly as deployed:
top-1 accuracy (classification) or mIoU and friends (segmentation, void ignored)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import EdgeCalibError
from ..core.scoring import LabelMap, Scorer
from .tensors import DomainData


@torch.no_grad()
def predict(classifier: torch.nn.Module, data: DomainData, calibrator: torch.nn.Module | None = None,
            batch_size: int = 512, device="cpu") -> np.ndarray:
    """Top-1 predictions (N,) or (N, H, W) of classifier(calibrator(x)), both in eval mode."""
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


def check_task(task: str, data: DomainData) -> None:
    """A segmenter needs masks and a classifier image labels: one line when they do not meet
    (before any work, not after an epoch)."""
    if data.labels is None:
        return
    masks = data.labels.ndim == 3
    if masks != (task == "segmentation"):
        raise EdgeCalibError(f"{data.name} has {'label masks' if masks else 'image labels'}, "
                             f"but the model is a {'classifier' if masks else 'segmenter'}; "
                             f"give a {'classification' if masks else 'segmentation'} dataset")


def _labels(data: DomainData) -> np.ndarray:
    if data.labels is None:
        raise EdgeCalibError(f"{data.name} has no labels: scores need a labelled dataset")
    return data.labels


def accuracy(classifier, data: DomainData, calibrator=None, batch_size=512, device="cpu") -> float:
    """Top-1 accuracy in percent."""
    labels = _labels(data)
    return float((predict(classifier, data, calibrator, batch_size, device) == labels).mean() * 100)


@torch.no_grad()
def segmentation(classifier, data: DomainData, calibrator=None, batch_size=4, device="cpu",
                 labels: list[str] | None = None, label_map: LabelMap | None = None) -> dict:
    """mIoU, per-class IoU, pixel accuracy, fwIoU over ``data`` (its void pixels ignored), for
    the model's classes ``labels`` (default: the dataset's) or through ``label_map``."""
    truth = _labels(data)
    scorer = Scorer("segmentation", labels or list(data.classes), data.void, label_map,
                    data.name)
    for start in range(0, len(data), batch_size):
        part = np.arange(start, min(start + batch_size, len(data)))
        x = data.batch(part, device)
        if calibrator is not None:
            x = calibrator(x)
        logits = classifier(x)
        if logits.shape[-2:] != truth.shape[-2:]:  # scored at the labels' full resolution
            logits = F.interpolate(logits, size=truth.shape[-2:], mode="bilinear",
                                   align_corners=False)
        scorer.add(logits.argmax(1).cpu().numpy(), truth[part])
    return scorer.scores()


def classification(classifier, data: DomainData, calibrator=None, batch_size=512, device="cpu",
                   labels: list[str] | None = None, label_map: LabelMap | None = None) -> dict:
    """Top-1 accuracy in percent, of the model's classes or through ``label_map``."""
    truth = _labels(data)
    scorer = Scorer("classification", labels or list(data.classes), None, label_map, data.name)
    scorer.add(predict(classifier, data, calibrator, batch_size, device), truth)
    return scorer.scores()


def scores(task: str, classifier, data: DomainData, calibrator=None, device="cpu",
           batch_size: int | None = None) -> dict:
    """{"accuracy"} for classification; mIoU etc. for segmentation; ``batch_size`` images per
    forward (default 512 for classification, 4 for segmentation)."""
    if task == "segmentation":
        return segmentation(classifier, data, calibrator, batch_size or 4, device=device)
    return {"accuracy": accuracy(classifier, data, calibrator, batch_size or 512, device=device)}


@torch.no_grad()
def unlabelled_scores(classifier, data: DomainData, stats, calibrator=None, batch_size=8,
                      device="cpu") -> dict:
    """What can be measured on a domain's frames without labels, to compare calibrators:
    ``stats_distance`` (``SourceStatsLoss`` over all of ``data``), ``pixel_w1`` (mean per-frame,
    per-channel |quantile - source quantile| over the recorded quantile levels, normalised
    units), ``entropy`` (mean prediction entropy, nats), all lower is closer to the source; and
    ``information`` (the information-maximisation score, higher is better: the entropy of the
    mean prediction minus the mean entropy, H(mean_n p_n) - mean_n H(p_n), p_n the softmax of
    an image, or of a pixel for segmentation)."""
    from .losses import prediction_entropy
    from .source_stats import stats_distance

    distance = stats_distance(classifier, data, stats, calibrator, batch_size, device)
    levels = np.linspace(0.0, 1.0, stats.pixel_quantiles.shape[1])
    reference = stats.pixel_quantiles.numpy()
    w1, entropy, probability_sum, count = [], [], 0.0, 0
    for start in range(0, len(data), batch_size):
        x = data.batch(np.arange(start, min(start + batch_size, len(data))), device)
        if calibrator is not None:
            x = calibrator(x)
        logits = classifier(x)
        entropy.append(prediction_entropy(logits).item() * len(x))
        p = torch.softmax(logits.double(), dim=1).movedim(1, -1).reshape(-1, logits.shape[1])
        probability_sum, count = probability_sum + p.sum(dim=0), count + len(p)
        for frame in x.cpu().numpy():
            q = np.quantile(frame.reshape(frame.shape[0], -1), levels, axis=1).T
            w1.append(np.abs(q - reference).mean())
    mean_entropy = sum(entropy) / len(data)
    marginal = probability_sum / count
    marginal_entropy = -(marginal * marginal.clamp_min(1e-300).log()).sum().item()
    return {"stats_distance": distance, "pixel_w1": float(np.mean(w1)),
            "entropy": mean_entropy, "information": marginal_entropy - mean_entropy}
