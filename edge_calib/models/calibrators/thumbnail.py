"""An image-adaptive global transform: a tiny network looks at a thumbnail of the frame and
predicts, for this frame, a colour matrix and bias applied to every pixel.

    t = avgpool(x) to grid x grid;   [A | b] = MLP(t)   (A: C x C, b: C, per image)
    h(x)[p] = A x[p] + b

(the idea of Image-Adaptive 3D-LUT and IA-YOLO's DIP filters: parameters from a downscaled
image). The network's cost does not grow with the image size; per pixel there is one small
MatMul and the bounded residual. It follows exposure and white balance frame by frame but
cannot change shapes or textures.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...core.errors import EdgeCalibError
from .base import BoundedCalibrator, SizeKey, zero_init


class ThumbnailCalibrator(BoundedCalibrator):
    arch = "thumbnail"
    SIZE = {"grid": SizeKey(8, 1, "thumbnail side (average pooling to grid x grid)"),
            "hidden": SizeKey(32, 1, "hidden units of the predictor")}
    PRESETS = {"small": {"grid": 4, "hidden": 16}, "medium": {"grid": 8, "hidden": 32},
               "large": {"grid": 8, "hidden": 128}}

    def build(self, channels: int, grid: int, hidden: int) -> None:
        self.grid, self.channels = grid, channels
        self.predictor = nn.Sequential(nn.Flatten(), nn.Linear(channels * grid * grid, hidden),
                                       nn.ReLU())
        self.matrix_head = zero_init(nn.Linear(hidden, channels * channels))
        self.bias_head = zero_init(nn.Linear(hidden, channels))

    def thumbnail(self, x):
        """grid x grid average pooling; a size that is not a multiple of grid loses its last
        rows and columns (one static AveragePool node)."""
        h, w = x.shape[-2:]
        if h < self.grid or w < self.grid:
            raise EdgeCalibError(f"thumbnail calibrator: input {int(h)}x{int(w)} is smaller "
                                 f"than its grid {self.grid}")
        kh, kw = int(h) // self.grid, int(w) // self.grid
        pooled = F.avg_pool2d(x, (kh, kw))
        if int(h) % self.grid or int(w) % self.grid:
            pooled = pooled[..., :self.grid, :self.grid]
        return pooled

    def raw(self, x):
        c, (h, w) = self.channels, x.shape[-2:]
        features = self.predictor(self.thumbnail(x))
        matrix = self.matrix_head(features).reshape(-1, c, c)
        bias = self.bias_head(features).reshape(-1, c, 1)
        pixels = x.reshape(-1, c, int(h) * int(w))
        return (torch.matmul(matrix, pixels) + bias).reshape(x.shape)
