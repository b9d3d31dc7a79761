"""``edge-calib compress CALIBRATOR --int8``: a calibrator quantised the way the INT8
classifier is (TensorRT's conventions, ``edge_calib.models.int8``): per-channel weight scales and
per-tensor activation scales on the input of every Conv/Linear, post-training, estimated on
the calibrator's own target-domain images (unlabelled, as in training). Layers without weights
(InstanceNorm, ConvTranspose, the bounded residual, the per-pixel colour matrix) stay float.
The result is a new calibrator checkpoint, still paired with the classifier it was trained
against.
"""

from __future__ import annotations

import copy
import dataclasses
import time

import numpy as np
import torch

from ..core.errors import EdgeCalibError
from ..models.int8 import QuantLayer, estimate_scales, quantize_layers
from ..models.store import Calibrator
from ..train.tensors import DomainData


def quantise_calibrator(cal: Calibrator, calib: DomainData, act_method: str = "percentile",
                        calib_batches: int = 8, batch_size: int = 64,
                        seed: int = 0) -> Calibrator:
    """A fake-quantised copy of ``cal`` with scales from ``calib``; the change it makes to the
    calibrated images on those images is recorded in the metadata."""
    if cal.int8:
        raise EdgeCalibError(f"{cal.path}: the calibrator is already INT8; quantise the float "
                             "checkpoint")
    started = time.time()
    module = quantize_layers(copy.deepcopy(cal.module).eval())
    layers = [m for m in module.modules() if isinstance(m, QuantLayer)]
    if not layers:
        raise EdgeCalibError(f"calibrator {cal.module.config['arch']!r} has no Conv/Linear layer "
                             "to quantise")
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(calib))[:calib_batches * batch_size]
    batches = [calib.batch(idx[i:i + batch_size], "cpu") for i in range(0, len(idx), batch_size)]
    scales = estimate_scales(module, batches, act_method)
    with torch.no_grad():
        change = max(float((module(x) - cal.module(x)).abs().max()) for x in batches)
    meta = dataclasses.replace(
        cal.meta, compression={"int8": True, "activation_range": act_method},
        float_fingerprint=cal.fingerprint,
        quantization={"dataset": calib.name, "samples": int(len(idx)),
                      "quantised_layers": len(layers), "int8_scales": scales,
                      "max_abs_change_on_calibration_images": change,
                      "time_s": round(time.time() - started, 2)})
    for p in module.parameters():
        p.requires_grad_(False)
    return Calibrator(module, meta)
