"""From the network's predictions to what the stream reports and draws, per task (numpy +
OpenCV). The engines give class maps (``Engines.infer_frame``: the ArgMax ran in the graph);
``predictions_from_logits`` makes the same from float logits where a graph could not.

- classification: class (N,) and top-1 probability (N,) -> label, confidence; the label is
  written on the frame;
- segmentation: class map (N, h, w) at the network's output resolution -> per-class pixel
  fractions; the map is brought to the frame's size (nearest) only when a sink draws it, and
  coloured through a lookup table.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..imaging.domain_features import softmax

# CamVid's conventional colours (SegNet tutorial) for 11 classes; other label sets cycle them
PALETTE = np.array([[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128],
                    [60, 40, 222], [128, 128, 0], [192, 128, 128], [64, 64, 128],
                    [64, 0, 128], [64, 64, 0], [0, 128, 192]], np.uint8)


def predictions_from_logits(task: str, logits: np.ndarray) -> dict:
    """What a frame graph returns, computed from float logits: {"classes", "confidence"}."""
    if task == "segmentation":
        return {"classes": logits.argmax(axis=1).astype(np.uint8), "confidence": None}
    p = softmax(logits.astype(np.float64))
    return {"classes": p.argmax(axis=1).astype(np.int32),
            "confidence": p.max(axis=1).astype(np.float32)}


class ClassificationOutput:
    def __init__(self, labels: list[str]):
        self.labels = labels

    def summarise(self, predictions: dict) -> dict:
        label = int(predictions["classes"][0])
        return {"label": label, "confidence": round(float(predictions["confidence"][0]), 6)}

    def headline(self, result: dict) -> str:
        return f"{self.labels[result['label']]} ({result['confidence']:.2f})"

    def draw(self, rgb: np.ndarray, result: dict) -> np.ndarray:
        return rgb


class SegmentationOutput:
    def __init__(self, labels: list[str], alpha: float = 0.5):
        self.labels, self.alpha = labels, alpha
        palette = PALETTE[np.arange(len(labels)) % len(PALETTE)]
        self.lut = np.zeros((256, 1, 3), np.uint8)  # class id -> colour, for cv2.LUT
        self.lut[:len(labels), 0] = palette
        self._mask = None

    def summarise(self, predictions: dict) -> dict:
        mask = predictions["classes"][0]
        self._mask = mask
        fractions = np.bincount(mask.ravel(), minlength=len(self.labels)) / mask.size
        return {"class_fractions": {name: round(float(f), 5)
                                    for name, f in zip(self.labels, fractions) if f > 0}}

    def headline(self, result: dict) -> str:
        top = sorted(result["class_fractions"].items(), key=lambda kv: -kv[1])[:3]
        return "  ".join(f"{name} {100 * f:.0f}%" for name, f in top)

    def draw(self, rgb: np.ndarray, result: dict) -> np.ndarray:
        """The last summarised map at the frame's size, in its class colours, over the frame."""
        h, w = rgb.shape[:2]
        mask = self._mask
        if mask.shape != (h, w):
            mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
        colours = cv2.LUT(cv2.merge([mask, mask, mask]), self.lut)
        return cv2.addWeighted(rgb, 1 - self.alpha, colours, self.alpha, 0)


def output_for(task: str, labels: list[str]):
    return SegmentationOutput(labels) if task == "segmentation" else ClassificationOutput(labels)
