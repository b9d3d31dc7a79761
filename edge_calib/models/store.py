"""Saving and loading classifiers and calibrators, with their fingerprints.

A classifier checkpoint holds the architecture name, the input spec, the labels, its
compression (folded / pruned / INT8) and the weights; its *fingerprint* is a hash of all of
that and every tensor. Beside them it may hold the model's statistics on its source data
(``train.source_stats``), which are not part of the fingerprint: recording them again does not
unpair the model's calibrators. An imported model (arch ``onnx``, ``edge-calib import-model``) holds
the user's ONNX file itself, byte for byte; its fingerprint is the file's sha256. A calibrator
checkpoint records the fingerprint of the classifier it was trained against; pairing it with
another classifier is an error naming both.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..core.errors import EdgeCalibError
from ..core.spec import InputSpec
from .calibrators import BoundedCalibrator, fingerprint_identity, make_calibrator
from .checkpoint import load_checkpoint, save_checkpoint, state_fingerprint
from .classifiers import build_classifier, count_parameters
from .records import CalibratorRecord, ClassifierRecord, is_int8
from .source_record import SourceStats

CLASSIFIER, CALIBRATOR = "classifier", "calibrator"


@dataclass
class Classifier:
    """A frozen classifier as deployed: module (eval mode), identity and fingerprint."""

    module: nn.Module
    arch: str
    spec: InputSpec
    num_classes: int
    labels: list[str]
    compression: dict | None = None
    metrics: dict = field(default_factory=dict)
    path: str | None = None
    onnx_bytes: bytes | None = None  # an imported model's file, deployed unchanged
    imported_task: str | None = None
    # the model's own statistics on source data (recorded by train.source_stats); kept beside
    # the weights, outside the fingerprint
    source_stats: SourceStats | None = None
    graph_layout: str = "NCHW"  # an imported graph's own input layout (NHWC: transposed first)

    def identity(self) -> dict:
        identity = {"arch": self.arch, "num_classes": self.num_classes,
                    "input_spec": self.spec.to_dict(), "compression": self.compression}
        if self.onnx_bytes is not None:
            identity["task"] = self.task
        return identity

    @property
    def int8(self) -> bool:
        """Compressed with ``--int8`` (fake-quantised Conv/Linear layers, Q/DQ on export)."""
        return is_int8(self.compression)

    @property
    def task(self) -> str:
        from .classifiers import task_of

        return self.imported_task if self.onnx_bytes is not None else task_of(self.arch)

    @property
    def fingerprint(self) -> str:
        if self.onnx_bytes is not None:
            return hashlib.sha256(self.onnx_bytes).hexdigest()[:16]
        return state_fingerprint(self.module.state_dict(), self.identity())

    @property
    def params(self) -> int:
        return count_parameters(self.module)

    def record(self) -> ClassifierRecord:
        """What its checkpoint records beside the weights."""
        identity = self.identity()
        return ClassifierRecord(
            arch=self.arch, num_classes=self.num_classes, input_spec=self.spec,
            labels=list(self.labels), fingerprint=self.fingerprint, compression=self.compression,
            metrics=self.metrics, task=identity.get("task"), graph_layout=self.graph_layout,
            onnx_sha256=None if self.onnx_bytes is None
            else hashlib.sha256(self.onnx_bytes).hexdigest(),
            source_stats=None if self.source_stats is None else self.source_stats.meta())

    def save(self, path: str | Path) -> str:
        record = self.record()
        tensors = {"state": self.module.state_dict()}
        if self.source_stats is not None:
            tensors["source_stats"] = self.source_stats.tensors()
        if self.onnx_bytes is not None:
            tensors["onnx"] = torch.frombuffer(bytearray(self.onnx_bytes), dtype=torch.uint8)
        save_checkpoint(path, CLASSIFIER, record.to_dict(), tensors)
        return record.fingerprint


def imported_module(onnx_bytes: bytes, layout: str = "NCHW") -> nn.Module:
    import onnx

    from .onnx_import import OnnxModule

    return OnnxModule(onnx.load_from_string(onnx_bytes), layout).eval()


def build_structure(arch: str, num_classes: int, compression: dict | None) -> nn.Module:
    """The module a checkpoint's weights fit: the float net, or its folded / INT8 form."""
    from .fold import fold_batchnorm
    from .int8 import quantize_layers

    module = build_classifier(arch, num_classes)
    if compression and compression.get("folded"):
        module = fold_batchnorm(module)
        if is_int8(compression):
            module = quantize_layers(module)
    return module


def load_classifier(path: str | Path) -> Classifier:
    meta, tensors = load_checkpoint(path, CLASSIFIER)
    record = ClassifierRecord.read(meta, str(path))
    try:
        onnx_bytes = None
        if record.arch == "onnx":
            onnx_bytes = tensors["onnx"].numpy().tobytes()
            module = imported_module(onnx_bytes, record.graph_layout)
        else:
            module = build_structure(record.arch, record.num_classes, record.compression)
        module.load_state_dict(tensors["state"])
        stats = (SourceStats.from_saved(record.source_stats, tensors["source_stats"], str(path))
                 if record.source_stats is not None else None)
        clf = Classifier(module.eval(), record.arch, record.input_spec, record.num_classes,
                         list(record.labels), record.compression, record.metrics, str(path),
                         onnx_bytes, record.task, stats, record.graph_layout)
    except (KeyError, RuntimeError, TypeError, ValueError, AttributeError) as exc:
        raise EdgeCalibError(f"{path}: classifier checkpoint does not match its architecture "
                             f"({str(exc).splitlines()[0][:160]})") from None
    for p in clf.module.parameters():
        p.requires_grad_(False)
    if record.fingerprint != clf.fingerprint:
        raise EdgeCalibError(f"{path}: weights do not match the recorded fingerprint "
                             f"{record.fingerprint} (got {clf.fingerprint}); file altered?")
    return clf


@dataclass
class Calibrator:
    module: BoundedCalibrator
    meta: CalibratorRecord
    path: str | None = None

    @property
    def fingerprint(self) -> str:
        return calibrator_fingerprint(self.module)

    @property
    def int8(self) -> bool:
        """Quantised with ``edge-calib compress --int8`` (fake-quantised Conv/Linear layers)."""
        return self.meta.int8

    @property
    def params(self) -> int:
        return count_parameters(self.module)

    def check_pairs_with(self, classifier: Classifier) -> None:
        expected = self.meta.classifier_fingerprint
        if expected != classifier.fingerprint:
            raise EdgeCalibError(
                f"calibrator {self.path or self.meta.domain} was trained against classifier "
                f"{expected}, not {classifier.fingerprint} ({classifier.path}); train it again for "
                "this classifier")


def calibrator_fingerprint(module: BoundedCalibrator) -> str:
    return state_fingerprint(module.state_dict(), fingerprint_identity(module.config))


def build_calibrator(config: dict, spec: InputSpec, compression: dict | None = None
                     ) -> BoundedCalibrator:
    """A calibrator of ``config`` (arch, size settings, eps, perturbation) for inputs of ``spec``;
    an INT8 ``compression`` swaps its Conv/Linear layers for their fake-quantised twins."""
    module = make_calibrator(config, spec.channels, spec.lo, spec.hi)
    if is_int8(compression):
        from .int8 import quantize_layers

        module = quantize_layers(module)
    return module


def save_calibrator(path: str | Path, module: BoundedCalibrator, record: CalibratorRecord
                    ) -> CalibratorRecord:
    """The weights with ``record`` (the classifier fingerprint, the domain, the data and the
    training), completed with the architecture, fingerprint and size; returns the record."""
    record = dataclasses.replace(record, architecture=module.config,
                                 fingerprint=calibrator_fingerprint(module),
                                 params=count_parameters(module))
    save_checkpoint(path, CALIBRATOR, record.to_dict(), {"state": module.state_dict()})
    return record


def load_calibrator(path: str | Path) -> Calibrator:
    meta, tensors = load_checkpoint(path, CALIBRATOR)
    record = CalibratorRecord.read(meta, str(path))
    try:
        module = build_calibrator(record.architecture, record.input_spec, record.compression)
        module.load_state_dict(tensors["state"])
    except (KeyError, RuntimeError, TypeError, ValueError, AttributeError) as exc:
        raise EdgeCalibError(f"{path}: calibrator checkpoint is malformed "
                             f"({str(exc).splitlines()[0][:160]})") from None
    module.eval()
    if not all(torch.isfinite(t).all() for t in module.state_dict().values()):
        raise EdgeCalibError(f"{path}: calibrator weights are not finite (NaN or inf); it cannot "
                             "be deployed, train it again")
    calib = Calibrator(module, record, str(path))
    if record.fingerprint != calib.fingerprint:
        raise EdgeCalibError(f"{path}: weights do not match the recorded fingerprint")
    return calib
