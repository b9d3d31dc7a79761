"""Scoring a model's predictions against a dataset's labels, the model's classes directly or
through a label map (numpy only: ``eval`` on the workstation and ``eval --deploy`` share it).

A label map (``--label-map FILE``, a JSON object ``{model class name: label id}``) scores a model
whose classes differ from the labels' (e.g. CamVid's 11 classes onto 7 coarse groups): several
model classes may map to one label id; a prediction of a model class missing from the map is
wrong wherever the pixel (or image) is labelled; label ids that no model class maps to are
left out of the scores and listed with their pixel (or image) counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import EdgeCalibError
from .metrics import confusion, segmentation_scores

UNMAPPED = "(unmapped model classes)"


@dataclass(frozen=True)
class LabelMap:
    """Model class index -> position among the scored label ids (``len(ids)``: unmapped)."""

    to_position: np.ndarray
    ids: tuple[int, ...]
    names: tuple[str, ...]  # a name per scored label id: the model classes mapped to it

    @classmethod
    def load(cls, path: str | Path, model_labels: list[str]) -> "LabelMap":
        try:
            raw = json.loads(Path(path).read_text())
        except OSError as exc:
            raise EdgeCalibError(f"--label-map {path}: {exc.strerror}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise EdgeCalibError(f"--label-map {path}: not JSON ({exc})") from None
        if not isinstance(raw, dict) or not raw:
            raise EdgeCalibError(f"--label-map {path}: expected a JSON object "
                                 "{model class name: label id}")
        unknown = sorted(set(raw) - set(model_labels))
        if unknown:
            raise EdgeCalibError(f"--label-map {path}: names unknown class {unknown[0]!r} (the "
                                 f"model's classes: {', '.join(model_labels)})")
        for name, value in raw.items():
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 254:
                raise EdgeCalibError(f"--label-map {path}: {name!r} maps to {value!r}; label ids "
                                     "are integers 0-254 (255 marks unlabelled pixels)")
        ids = tuple(sorted(set(raw.values())))
        position = {label: i for i, label in enumerate(ids)}
        to_position = np.full(len(model_labels), len(ids), np.int64)
        for name, value in raw.items():
            to_position[model_labels.index(name)] = position[value]
        names = tuple("+".join(n for n in model_labels if raw.get(n) == label) for label in ids)
        return cls(to_position, ids, names)


class Scorer:
    """Accumulates (predictions, labels) batch by batch. ``void``: the label value of pixels
    nobody labelled. Without a map, labels are model class indices and any other value (below
    ``void``) is an error naming it."""

    def __init__(self, task: str, model_labels: list[str], void: int | None = None,
                 label_map: LabelMap | None = None, dataset: str = "the dataset"):
        self.task, self.labels, self.map, self.dataset = task, list(model_labels), label_map, dataset
        if void is None:  # CamVid's masks mark void with the class count; labels have none
            void = len(self.labels) if task == "segmentation" else -1
        self.void = void
        scored = len(label_map.ids) if label_map else len(self.labels)
        self.size = scored + (1 if label_map else 0)  # + the unmapped predictions' column
        self.matrix = np.zeros((self.size, self.size), np.int64)
        self.left_out: dict[int, int] = {}

    def _truth(self, truth: np.ndarray) -> np.ndarray:
        """Label values as positions in the matrix; void and left-out ids beyond it."""
        truth = np.asarray(truth).astype(np.int64)
        labelled = truth != self.void
        if self.map is None:
            bad = labelled & ((truth < 0) | (truth >= len(self.labels)))
            if bad.any():
                raise EdgeCalibError(
                    f"{self.dataset}: label value {int(truth[bad][0])} is out of range: the "
                    f"model has {len(self.labels)} classes (0-{len(self.labels) - 1}), "
                    f"{self.void} marks unlabelled; give --label-map to score other ids")
            return np.where(labelled, truth, self.size)
        lookup = {label: i for i, label in enumerate(self.map.ids)}
        out = np.full(truth.shape, self.size, np.int64)
        for value in np.unique(truth[labelled]):
            where = labelled & (truth == value)
            if int(value) in lookup:
                out[where] = lookup[int(value)]
            else:
                self.left_out[int(value)] = self.left_out.get(int(value), 0) + int(where.sum())
        return out

    def add(self, predicted: np.ndarray, truth: np.ndarray) -> None:
        """``predicted``: model class indices, shaped like ``truth``."""
        predicted = np.asarray(predicted).astype(np.int64)
        if self.map is not None:
            predicted = self.map.to_position[predicted]
        self.matrix += confusion(predicted, self._truth(truth), self.size)

    def scores(self) -> dict:
        names = list(self.map.names) + [UNMAPPED] if self.map else self.labels
        if self.task == "segmentation":
            out = segmentation_scores(self.matrix, names)
            if self.map is not None:  # the unmapped column is never a class of its own
                out["per_class_iou"].pop(UNMAPPED)
                values = [v for v in out["per_class_iou"].values() if v is not None]
                out["miou"] = float(np.mean(values)) if values else float("nan")
        else:
            total = self.matrix.sum()
            out = {"accuracy": float(100 * np.trace(self.matrix) / total) if total else
                   float("nan"), "scored": int(total)}
        if self.map is not None:
            out["label_map"] = {"scored_ids": dict(zip(map(str, self.map.ids), self.map.names)),
                                "left_out_ids": {str(k): v for k, v in sorted(
                                    self.left_out.items())}}
        return out
