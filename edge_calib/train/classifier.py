"""Supervised training of a source classifier (Adam, cross-entropy), with optional augmentation."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..models.classifiers import build_classifier
from ..models.store import Classifier
from ..progress import echo_err, progress_bar
from ..spec import InputSpec
from .evaluate import accuracy
from .tensors import DomainData, epoch_order


def random_affine(x: torch.Tensor, background: float, max_shift=0.1, max_rot_deg=10.0,
                  scale=(0.9, 1.1)) -> torch.Tensor:
    """Small random rotations, scalings and shifts (fractions of the image), background-filled."""
    b = x.shape[0]
    angle = (torch.rand(b) * 2 - 1) * math.radians(max_rot_deg)
    s = torch.empty(b).uniform_(*scale)
    shift = (torch.rand(b, 2) * 2 - 1) * max_shift * 2  # affine_grid coordinates span [-1, 1]
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1).to(x.device)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x - background, grid, align_corners=False, padding_mode="zeros") + background


def train_classifier(arch: str, spec: InputSpec, train: DomainData, test: DomainData | None,
                     epochs: int, batch_size: int, lr: float, seed: int, device: torch.device,
                     augment: bool = False, val_fraction: float = 0.1, progress: bool = True,
                     log_path: Path | None = None) -> Classifier:
    """Train ``arch`` on labelled ``train``; report held-out source validation each epoch and
    source test accuracy at the end (stored in the checkpoint's metrics)."""
    torch.manual_seed(seed)
    fit, val = train.split(val_fraction, seed)
    num_classes = int(train.labels.max()) + 1
    model = build_classifier(arch, num_classes=num_classes).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    steps = len(fit) // batch_size
    history = []
    for epoch in range(epochs):
        model.train()
        order = epoch_order(len(fit), seed, epoch)
        started, loss_sum, correct, seen = time.time(), 0.0, 0, 0
        with progress_bar(steps, f"classifier epoch {epoch + 1}/{epochs}", progress) as bar:
            for step in range(steps):
                idx = order[step * batch_size:(step + 1) * batch_size].numpy()
                x, y = fit.batch(idx, device), fit.labels_of(idx, device)
                if augment:
                    x = random_affine(x, background=spec.lo[0])
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                loss_sum += loss.item() * len(idx)
                correct += (logits.argmax(1) == y).sum().item()
                seen += len(idx)
                bar.update(1, current_item=f"loss {loss_sum / seen:.4f}")
        model.eval()
        row = {"epoch": epoch + 1, "loss": loss_sum / max(seen, 1),
               "train_acc": 100.0 * correct / max(seen, 1), "time_s": time.time() - started}
        if val is not None:
            row["val_acc"] = accuracy(model, val, device=device)
        history.append(row)
        echo_err(json.dumps(row))
        if log_path is not None:
            with open(log_path, "a") as log:
                log.write(json.dumps(row) + "\n")
    metrics = {"source": train.name, "epochs": epochs, "batch_size": batch_size, "lr": lr,
               "seed": seed, "augment": augment, "train_samples": len(fit),
               "history": history}
    if val is not None:
        metrics["val_acc"] = history[-1]["val_acc"] if history else None
    if test is not None and test.labels is not None:
        metrics["source_test"] = test.name
        metrics["source_test_acc"] = accuracy(model, test, device=device)
    model = model.cpu().eval()
    return Classifier(model, arch, spec, num_classes, [str(i) for i in range(num_classes)], None,
                      metrics)
