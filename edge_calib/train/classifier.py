"""Training the frozen source model before deployment: a classifier (cross-entropy) or a
segmenter (class-weighted cross-entropy with the void label ignored, trained on random scaled
crops and flips at its input size, evaluated at the labels' full resolution), either with the
``--augment`` transforms of ``augment.py``. Both run the one supervised loop (``supervised.py``) and resume with --resume."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..core.errors import EdgeCalibError
from ..core.spec import InputSpec
from ..models.classifiers import build_classifier, task_of
from ..models.store import Classifier
from .augment import augmentation
from .evaluate import accuracy, segmentation
from .distributed import Distributed
from .source_stats import record_source_stats
from .supervised import Fit, class_weights, fit
from .tensors import DomainData


def scaled_crops(scale: float, crop: tuple[int, int], jitter: float = 0.25):
    """A batch transform for segmentation: resize images (bilinear) and masks (nearest) by
    ``scale`` x U(1 - jitter, 1 + jitter), take one random ``crop``, flip each sample
    horizontally with probability 1/2."""

    def transform(x: torch.Tensor, y: torch.Tensor):
        s = scale * float(torch.empty(1).uniform_(1 - jitter, 1 + jitter))
        h, w = x.shape[-2:]
        size = (max(crop[0], round(h * s)), max(crop[1], round(w * s)))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        y = F.interpolate(y[:, None].float(), size=size, mode="nearest")[:, 0].long()
        top = int(torch.randint(0, size[0] - crop[0] + 1, ()))
        left = int(torch.randint(0, size[1] - crop[1] + 1, ()))
        x = x[..., top:top + crop[0], left:left + crop[1]]
        y = y[..., top:top + crop[0], left:left + crop[1]]
        flip = torch.rand(x.shape[0], device=x.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        y = torch.where(flip[:, None, None], y.flip(-1), y)
        return x, y

    return transform


def default_crop(spec: InputSpec) -> tuple[int, int]:
    """Training crops for a segmenter: multiples of 16 near 98% x 93% of the input (176 x 224
    at 180 x 240)."""
    return (max(16, round(spec.height * 176 / 180 / 16) * 16),
            max(16, round(spec.width * 224 / 240 / 16) * 16))


def train_classifier(arch: str, spec: InputSpec, train: DomainData, test: DomainData | None,
                     epochs: int, batch_size: int, lr: float, seed: int, device: torch.device,
                     augment: str = "none", val_fraction: float = 0.1, progress: bool = True,
                     val: DomainData | None = None, state_path: Path | None = None,
                     resume: bool = False, train_scale: float = 1.0,
                     crop: tuple[int, int] | None = None, dist: Distributed = Distributed(),
                     cap_batch: bool = False) -> Classifier | None:
    """Train ``arch`` on labelled ``train``; report source validation (``val``, else a held-out
    ``val_fraction`` of ``train``) each epoch (every 10th for segmentation) and source test
    scores at the end (stored in the checkpoint's metrics). The model is the last epoch's, with
    its statistics on ``train`` recorded (``source_stats``). Under torchrun: None on the ranks
    other than 0 (which alone scores and writes)."""
    task = task_of(arch)
    if train.labels is None:
        raise EdgeCalibError(f"{train.name}: training needs labelled images")
    if task == "segmentation" and train.labels.ndim != 3:
        raise EdgeCalibError(f"{arch} is a segmenter: {train.name} needs label masks")
    if task == "classification" and train.labels.ndim != 1:
        raise EdgeCalibError(f"{arch} is a classifier: {train.name} has label masks")
    if val is None:
        train, val = train.split(val_fraction, seed)
    torch.manual_seed(seed)
    if task == "segmentation":
        labels = list(train.classes)
        weights = class_weights(train.labels, len(labels), ignore=len(labels)).to(device)
        loss_fn = lambda logits, y: F.cross_entropy(logits, y, weight=weights,  # noqa: E731
                                                    ignore_index=len(labels))
        crops = scaled_crops(train_scale, crop or default_crop(spec))
        extra = augmentation(augment, spec, task)
        transform = crops if extra is None else lambda x, y: crops(*extra(x, y))  # noqa: E731
        cfg = Fit(epochs, batch_size, lr, seed, weight_decay=1e-4, schedule="cosine",
                  label="segmenter epoch")
        every = max(1, min(10, epochs))
    else:
        labels = [str(i) for i in range(int(train.labels.max()) + 1)]
        loss_fn, transform = F.cross_entropy, augmentation(augment, spec, task)
        cfg = Fit(epochs, batch_size, lr, seed, label="classifier epoch")
        every = 1
    model = build_classifier(arch, num_classes=len(labels)).to(device)

    def evaluate(epoch: int) -> dict:
        if val is None or (epoch % every and epoch != epochs):
            return {}
        if task == "segmentation":
            return {"val_miou": segmentation(model, val, device=device)["miou"]}
        return {"val_acc": accuracy(model, val, device=device)}

    history = fit(model, train, cfg, loss_fn, device, transform=transform, evaluate=evaluate,
                  state_path=state_path, resume=resume, progress=progress, dist=dist,
                  cap_batch=cap_batch)
    if not dist.is_main:
        return None
    metrics = {"source": train.name, "task": task, "epochs": epochs,
               "batch_size": history[-1]["batch_size"] if history else batch_size,
               "world_size": dist.world_size,
               "lr": lr, "seed": seed, "augment": augment, "train_samples": len(train),
               "history": history}
    key = "val_miou" if task == "segmentation" else "val_acc"
    metrics[key] = history[-1].get(key) if history else None
    if test is not None and test.labels is not None:
        metrics["source_test"] = test.name
        if task == "segmentation":
            s = segmentation(model, test, device=device)
            metrics |= {"source_test_miou": s["miou"], "source_test_scores": s}
        else:
            metrics["source_test_acc"] = accuracy(model, test, device=device)
    model = model.cpu().eval()
    stats = record_source_stats(model, train, seed=seed)
    return Classifier(model, arch, spec, len(labels), labels, None, metrics,
                      source_stats=stats)
