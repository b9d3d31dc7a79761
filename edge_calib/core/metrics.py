"""Segmentation scores from a confusion matrix (numpy only: the device side computes them too).

    IoU_c = TP_c / (TP_c + FP_c + FN_c)          mIoU = mean of IoU_c over classes seen
    pixel accuracy = sum_c TP_c / labelled pixels
    fwIoU = sum_c (pixels of class c / labelled pixels) * IoU_c
Pixels labelled ``ignore`` (CamVid's void, 11) count nowhere.
"""

from __future__ import annotations

import numpy as np


def confusion(predicted: np.ndarray, truth: np.ndarray, classes: int, ignore: int | None = None
              ) -> np.ndarray:
    """(classes, classes) counts, rows = true class, columns = predicted class."""
    truth, predicted = np.asarray(truth).ravel(), np.asarray(predicted).ravel()
    keep = truth < classes if ignore is None else (truth != ignore) & (truth < classes)
    index = truth[keep].astype(np.int64) * classes + predicted[keep].astype(np.int64)
    return np.bincount(index, minlength=classes * classes).reshape(classes, classes)


def segmentation_scores(matrix: np.ndarray, names: list[str] | None = None) -> dict:
    """mIoU, per-class IoU, pixel accuracy, fwIoU and mean class accuracy, in percent."""
    matrix = matrix.astype(np.float64)
    tp = np.diag(matrix)
    gt, pred = matrix.sum(axis=1), matrix.sum(axis=0)
    union = gt + pred - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        recall = np.where(gt > 0, tp / gt, np.nan)
    total = gt.sum()
    names = names or [str(i) for i in range(len(tp))]
    return {"miou": float(100 * np.nanmean(iou)),
            "per_class_iou": {n: None if np.isnan(v) else round(float(100 * v), 3)
                              for n, v in zip(names, iou)},
            "pixel_accuracy": float(100 * tp.sum() / total) if total else float("nan"),
            "fwiou": float(100 * np.nansum(gt / total * iou)) if total else float("nan"),
            "mean_class_accuracy": float(100 * np.nanmean(recall)),
            "labelled_pixels": int(total)}


def pixel_distance(frames: np.ndarray, reference: np.ndarray, quantiles: int = 256) -> float:
    """How far frames are from the reference frames' pixel distribution, without labels: the
    mean per-frame, per-channel 1-D Wasserstein-1 distance, on Q evenly spaced quantiles,

        W = (1/(N C Q)) sum_n sum_c sum_q | quantile_q(frame_nc) - quantile_q(reference_c) |

    frames (N, C, H, W), reference (M, C, H, W) pooled over its frames, in the same units."""
    levels = np.linspace(0.0, 1.0, quantiles)
    channels = reference.shape[1]
    ref = np.quantile(np.moveaxis(reference, 1, 0).reshape(channels, -1), levels, axis=1)
    per_frame = [np.abs(np.quantile(f.reshape(channels, -1), levels, axis=1) - ref).mean()
                 for f in frames]
    return float(np.mean(per_frame))
