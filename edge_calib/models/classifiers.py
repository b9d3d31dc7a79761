"""The frozen models: CyCADA's DTN (the paper's "LeNet, 3.1M"), CyCADA's real LeNet, and the
LR-ASPP MobileNetV3-Small segmenter (``segmenters.py``).

Both are flat ``nn.Sequential`` stacks of standard layers so that compression can fold
BatchNorm, drop Dropout and wrap Conv/Linear layers by walking the list. Any module mapping
(B, C, H, W) to logits (B, K) or dense logits (B, K, H, W) fits the rest of edge-calib.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from ..core.errors import EdgeCalibError
from ..core.spec import CAMVID_RGB180, DIGITS_GREY28, DIGITS_RGB32, InputSpec
from .segmenters import lraspp_small


def dtn(num_classes: int = 10) -> nn.Sequential:
    """CyCADA's DTN: 3x32x32 -> conv5x5/2 3-64-128-256 (BN, Dropout2d, ReLU) -> 4096-512-K.

    3,133,962 parameters for K = 10.
    """
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 64, 5, stride=2, padding=2)), ("bn1", nn.BatchNorm2d(64)),
        ("drop1", nn.Dropout2d(0.1)), ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(64, 128, 5, stride=2, padding=2)), ("bn2", nn.BatchNorm2d(128)),
        ("drop2", nn.Dropout2d(0.3)), ("relu2", nn.ReLU()),
        ("conv3", nn.Conv2d(128, 256, 5, stride=2, padding=2)), ("bn3", nn.BatchNorm2d(256)),
        ("drop3", nn.Dropout2d(0.5)), ("relu3", nn.ReLU()),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(256 * 4 * 4, 512)), ("bn4", nn.BatchNorm1d(512)), ("relu4", nn.ReLU()),
        ("drop4", nn.Dropout(0.5)),
        ("fc2", nn.Linear(512, num_classes)),
    ]))


def lenet(num_classes: int = 10) -> nn.Sequential:
    """CyCADA's LeNet: 1x28x28 -> conv5x5 20, pool, conv5x5 50, pool -> 800-500-K.

    431,080 parameters for K = 10.
    """
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(1, 20, 5)), ("pool1", nn.MaxPool2d(2)), ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(20, 50, 5)), ("drop2", nn.Dropout2d(0.5)), ("pool2", nn.MaxPool2d(2)),
        ("relu2", nn.ReLU()),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(50 * 4 * 4, 500)), ("relu3", nn.ReLU()), ("drop3", nn.Dropout(0.5)),
        ("fc2", nn.Linear(500, num_classes)),
    ]))


# name -> (builder, input spec, task)
ARCHITECTURES: dict[str, tuple] = {
    "dtn": (dtn, DIGITS_RGB32, "classification"),
    "lenet": (lenet, DIGITS_GREY28, "classification"),
    "lraspp_small": (lraspp_small, CAMVID_RGB180, "segmentation"),
}


def build_classifier(arch: str, num_classes: int = 10) -> nn.Sequential:
    try:
        builder = ARCHITECTURES[arch][0]
    except KeyError:
        raise EdgeCalibError(f"unknown architecture {arch!r}; choose one of "
                             f"{', '.join(ARCHITECTURES)}") from None
    return builder(num_classes)


def default_input_spec(arch: str) -> InputSpec:
    build_classifier(arch)  # validates the name
    return ARCHITECTURES[arch][1]


def task_of(arch: str) -> str:
    """classification (logits (B, K)) or segmentation (dense logits (B, K, H, W))."""
    build_classifier(arch)  # validates the name
    return ARCHITECTURES[arch][2]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
