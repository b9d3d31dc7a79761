"""A compact segmentation network of the kind deployed on Jetsons: LR-ASPP over a
MobileNetV3-Small encoder (Howard et al., "Searching for MobileNetV3", ICCV 2019), defined
here in ~100 lines so the install stays free of torchvision.

Encoder: MobileNetV3-Small with the segmentation changes of the paper (last stage dilated
instead of strided, output stride 16, its channels halved: the "reduced tail"). Head (LR-ASPP):
the 1/16 features go through a 1x1 conv gated by a global-average-pooled sigmoid branch, are
upsampled to 1/8 and classified; the 1/8 features are classified directly; the two class maps
are summed and upsampled bilinearly to the input size. Every conv is a Conv-BN(-activation)
``nn.Sequential``, so BatchNorm folds and INT8 wraps it like the DTN's layers.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

# MobileNetV3-Small, reduced tail, dilated last stage:
# (kernel, expanded channels, out channels, squeeze-excite, activation, stride, dilation)
SMALL = [(3, 16, 16, True, "relu", 2, 1),
         (3, 72, 24, False, "relu", 2, 1),   # 1/8: the low-level features
         (3, 88, 24, False, "relu", 1, 1),
         (5, 96, 40, True, "hswish", 2, 1),
         (5, 240, 40, True, "hswish", 1, 1),
         (5, 240, 40, True, "hswish", 1, 1),
         (5, 120, 48, True, "hswish", 1, 1),
         (5, 144, 48, True, "hswish", 1, 1),
         (5, 144, 48, True, "hswish", 1, 2),
         (5, 288, 48, True, "hswish", 1, 2),
         (5, 288, 48, True, "hswish", 1, 2)]
LOW_INDEX = 2  # blocks[:3] end at 1/8 with 24 channels


def _activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "hswish": nn.Hardswish}[name]()


def conv_bn(cin, cout, kernel=1, stride=1, groups=1, dilation=1, act: str | None = None):
    layers = [nn.Conv2d(cin, cout, kernel, stride, dilation * (kernel - 1) // 2, dilation,
                        groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(_activation(act))
    return nn.Sequential(*layers)


def _divisible(v: float, by: int = 8) -> int:
    return max(by, int(v + by / 2) // by * by)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        squeezed = _divisible(channels / 4)
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.expand = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.expand(F.relu(self.reduce(s))))


class InvertedResidual(nn.Module):
    def __init__(self, cin, kernel, expanded, cout, se, act, stride, dilation):
        super().__init__()
        layers = [] if expanded == cin else [conv_bn(cin, expanded, act=act)]
        layers.append(conv_bn(expanded, expanded, kernel, stride, expanded, dilation, act))
        if se:
            layers.append(SqueezeExcite(expanded))
        layers.append(conv_bn(expanded, cout))
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class LRASPPMobileNetV3(nn.Module):
    """(B, 3, H, W) -> dense logits (B, K, H, W)."""

    def __init__(self, num_classes: int, width: float = 1.0, head: int = 128):
        super().__init__()
        ch = lambda c: _divisible(c * width)  # noqa: E731
        stem = ch(16)
        blocks, cin = [], stem
        for kernel, expanded, cout, se, act, stride, dilation in SMALL:
            blocks.append(InvertedResidual(cin, kernel, ch(expanded), ch(cout), se, act, stride,
                                           dilation))
            cin = ch(cout)
        self.stem = conv_bn(3, stem, 3, 2, act="hswish")
        self.low = nn.Sequential(*blocks[:LOW_INDEX + 1])
        self.high = nn.Sequential(*blocks[LOW_INDEX + 1:], conv_bn(cin, 6 * cin, act="hswish"))
        low_ch, high_ch = ch(SMALL[LOW_INDEX][2]), 6 * cin
        self.cbr = conv_bn(high_ch, head, act="relu")
        self.scale = nn.Conv2d(high_ch, head, 1)
        self.low_classifier = nn.Conv2d(low_ch, num_classes, 1)
        self.high_classifier = nn.Conv2d(head, num_classes, 1)

    def forward(self, x):
        size = x.shape[-2:]
        low = self.low(self.stem(x))
        high = self.high(low)
        gate = self.scale(F.adaptive_avg_pool2d(high, 1)).sigmoid()
        head = F.interpolate(self.cbr(high) * gate, size=low.shape[-2:], mode="bilinear",
                             align_corners=False)
        logits = self.low_classifier(low) + self.high_classifier(head)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def lraspp_small(num_classes: int = 11) -> LRASPPMobileNetV3:
    return LRASPPMobileNetV3(num_classes)
