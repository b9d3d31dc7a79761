"""From the network's output to what the stream reports and draws, per task (numpy + OpenCV).

- classification: logits (1, K) -> label, confidence; the label is written on the frame;
- segmentation: dense logits (1, K, h, w) -> a class mask brought back to the frame's size,
  per-class pixel fractions; the mask is drawn over the frame in the class colours.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..imaging.domain_features import softmax

# CamVid's conventional colours (SegNet tutorial) for 11 classes; other label sets cycle them
PALETTE = np.array([[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128],
                    [60, 40, 222], [128, 128, 0], [192, 128, 128], [64, 64, 128],
                    [64, 0, 128], [64, 64, 0], [0, 128, 192]], np.uint8)


class ClassificationOutput:
    def __init__(self, labels: list[str]):
        self.labels = labels

    def summarise(self, logits: np.ndarray, frame_shape) -> dict:
        p = softmax(logits.astype(np.float64))[0]
        label = int(p.argmax())
        return {"label": label, "confidence": round(float(p[label]), 6)}

    def headline(self, result: dict) -> str:
        return f"{self.labels[result['label']]} ({result['confidence']:.2f})"

    def draw(self, rgb: np.ndarray, result: dict) -> np.ndarray:
        return rgb


class SegmentationOutput:
    def __init__(self, labels: list[str], alpha: float = 0.5):
        self.labels, self.alpha = labels, alpha
        self.palette = PALETTE[np.arange(len(labels)) % len(PALETTE)]
        self._mask = None

    def summarise(self, logits: np.ndarray, frame_shape) -> dict:
        mask = logits[0].argmax(axis=0).astype(np.uint8)
        h, w = frame_shape[:2]
        if mask.shape != (h, w):
            mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
        self._mask = mask
        counts = np.bincount(mask.ravel(), minlength=len(self.labels))
        fractions = counts / mask.size
        return {"class_fractions": {name: round(float(f), 5)
                                    for name, f in zip(self.labels, fractions) if f > 0}}

    def headline(self, result: dict) -> str:
        top = sorted(result["class_fractions"].items(), key=lambda kv: -kv[1])[:3]
        return "  ".join(f"{name} {100 * f:.0f}%" for name, f in top)

    def draw(self, rgb: np.ndarray, result: dict) -> np.ndarray:
        """The last summarised mask in its class colours, blended over the frame."""
        colours = self.palette[self._mask]
        return cv2.addWeighted(rgb, 1 - self.alpha, colours, self.alpha, 0)


def output_for(task: str, labels: list[str]):
    return SegmentationOutput(labels) if task == "segmentation" else ClassificationOutput(labels)
