"""An image-adaptive tone curve: per frame and per channel, a monotone piecewise-linear curve
of K segments, predicted by a tiny network from the frame's own histogram and a thumbnail.
The family contains both the identity and per-frame histogram matching to the source.

In unit coordinates u = (x - lo) / (hi - lo) in [0, 1], knots t_k = k / K (k = 0..K):

    c_k = mean_p [u_p <= t_k]                the frame's CDF at the knots (a strided subsample
                                             of its pixels)
    m_k = Q_src(c_k)                         histogram matching to the source: Q_src is the
                                             source's quantile function (stored, per channel)
    a, b, r = MLP(c, thumbnail)              per frame and channel; the last layer starts at 0
    z_j = a log(K (m_{j+1} - m_j)) + r_j     log of each segment's slope relative to 1
    d_k = (a m_0 + b) + sum_{j<k} (exp(z_j) - 1) / K       the curve's offset from the identity
    d_k <- clamp(d_k, max(-e, -t_k), min(e, 1 - t_k))     (e = eps / (hi - lo) - 1 / (L-1))

so the curve v_k = t_k + d_k is monotone (its slopes exp(z_j) / K are positive; a median of
monotone functions stays monotone), within eps of the identity (e keeps a level in hand for
inputs between levels) and inside [0, 1]. a = r = b = 0
is the identity; a = 1, r = b = 0 is histogram matching at the knots. The curve is applied
through a table of the L = 256 input levels of an 8-bit camera,

    G(x) = lo + (u_l + d(u_l)) (hi - lo),   l = trunc(clamp(u (L-1) + 1/4, 0, L-1)),  u_l = l / (L-1)

(d interpolated linearly between knots): exactly the curve on 8-bit frames (every frame the
pipeline feeds is one; the 1/4 makes truncating and rounding casts pick the same level there),
and within a level of it between levels. Per pixel that is one per-channel affine map (a
BatchNormalization node), a Clip, a Cast and one GatherElements, whatever K is; the histogram
and the thumbnail come from a strided subsample of about 2048 pixels. Training evaluates the
very same table (gradients reach the curve through it), so torch and ONNX compute one function.

With ``matrix=1`` a per-frame colour matrix follows the curve (what mixes channels, e.g. an
inverted channel, which no increasing per-channel curve undoes). The same predictor gives,
per frame, A (C x C) and b (C), zero at the start, and with y = G(x) above

    G'(x) = clamp(x + clamp(y - x + eps tanh(A y + b), -eps, eps), lo, hi)

(the thumbnail family's residual colour map applied to the curve's output; the whole change
stays within eps). It adds a MatMul and about six elementwise passes per pixel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...core.errors import EdgeCalibError
from .base import BoundedCalibrator, SizeKey, zero_init

LEVELS = 256  # table entries: one per 8-bit input level
QUANTILES = 64  # the source quantile function is stored at probabilities j / QUANTILES
SAMPLES = 2048  # about this many pixels of each frame feed its histogram and thumbnail
MIN_LOG_SLOPE, MAX_LOG_SLOPE = -10.0, 5.0  # of a slope relative to the identity's


def ramp_matrix(points: torch.Tensor, knots: int) -> torch.Tensor:
    """(P, knots + 1) weights of piecewise-linear interpolation at ``points`` in [0, 1] between
    values given at the knots k / knots (hat functions)."""
    grid = torch.arange(knots + 1, dtype=torch.float64) / knots
    return torch.clamp(1 - (points.double()[:, None] - grid[None]).abs() * knots, min=0).float()


class CurveCalibrator(BoundedCalibrator):
    arch = "curve"
    SIZE = {"knots": SizeKey(32, 2, "segments of each channel's tone curve"),
            "hidden": SizeKey(32, 1, "hidden units of the predictor"),
            "grid": SizeKey(4, 1, "thumbnail side fed to the predictor"),
            "matrix": SizeKey(0, 0, "1: a per-frame colour matrix after the curve")}
    PRESETS = {"small": {"knots": 16, "hidden": 16, "grid": 4},
               "medium": {"knots": 32, "hidden": 32, "grid": 4},
               "large": {"knots": 64, "hidden": 64, "grid": 8}}

    def build(self, channels: int, knots: int, hidden: int, grid: int, matrix: int) -> None:
        if matrix not in (0, 1):
            raise EdgeCalibError(f"calibrator 'curve': matrix must be 0 or 1, got {matrix}")
        self.channels, self.knots, self.grid = channels, knots, grid
        span = self.hi - self.lo  # (1, C, 1, 1)
        self.register_buffer("span", span.reshape(1, channels, 1), persistent=False)
        self.register_buffer("knot_x", (self.lo.reshape(channels, 1) + span.reshape(channels, 1)
                                        * torch.arange(knots + 1) / knots), persistent=False)
        # the per-channel affine map to table levels, as BatchNormalization's weight and bias
        self.register_buffer("level_scale", ((LEVELS - 1) / span).flatten(), persistent=False)
        self.register_buffer("level_offset", (0.25 - self.lo * (LEVELS - 1) / span).flatten(),
                             persistent=False)
        self.register_buffer("zeros", torch.zeros(channels), persistent=False)
        self.register_buffer("ones", torch.ones(channels), persistent=False)
        levels = torch.arange(LEVELS, dtype=torch.float64) / (LEVELS - 1)
        self.register_buffer("to_levels", ramp_matrix(levels, knots).t().contiguous(),
                             persistent=False)  # (K+1, L): knot values -> level values
        # x at each level as the input spec computes it ((l / 255 - mean) / std in float32), so
        # that an untrained curve returns 8-bit frames bit for bit
        mean = (-self.lo.double() / span.double()).float().reshape(channels, 1)
        std = (1.0 / span.double()).float().reshape(channels, 1)
        level_values = (torch.arange(LEVELS, dtype=torch.float32) / 255.0 - mean) / std
        self.register_buffer("level_values", level_values, persistent=False)  # (C, L)
        self.register_buffer("cumulative", torch.triu(torch.ones(knots, knots + 1), 1) / knots,
                             persistent=False)  # (K, K+1): sum over j < k, divided by K
        t = torch.arange(knots + 1) / knots
        e = torch.clamp(self.eps / span.reshape(channels, 1) - 1.0 / (LEVELS - 1), min=0)
        low = -e if self.perturbation == "symmetric" else torch.zeros_like(e)
        self.register_buffer("offset_low", torch.maximum(low, -t), persistent=False)
        self.register_buffer("offset_high", torch.minimum(e, 1 - t), persistent=False)
        # the source's quantile function Q_src (normalised input units), stored with the
        # weights; the identity until ``set_source_quantiles`` (the trainer sets it)
        q = self.lo.reshape(channels, 1) + span.reshape(channels, 1) * torch.linspace(
            0, 1, QUANTILES + 1)
        self.register_buffer("source_quantiles", q)
        features = channels * (knots + 1) + channels * grid * grid
        self.predictor = nn.Sequential(nn.Linear(features, hidden), nn.ReLU())
        self.head = zero_init(nn.Linear(hidden, channels * (knots + 2)))
        # A and b of the colour matrix after the curve (matrix=1)
        self.matrix_head = zero_init(nn.Linear(hidden, channels * (channels + 1))) \
            if matrix else None

    def set_source_quantiles(self, quantiles: torch.Tensor) -> None:
        """Q_src at probabilities j / QUANTILES, (C, QUANTILES + 1), normalised input units."""
        quantiles = torch.as_tensor(quantiles, dtype=torch.float32)
        if tuple(quantiles.shape) != tuple(self.source_quantiles.shape):
            raise EdgeCalibError(f"curve calibrator: source quantiles must be shaped "
                                 f"{tuple(self.source_quantiles.shape)}, got "
                                 f"{tuple(quantiles.shape)}")
        with torch.no_grad():
            self.source_quantiles.copy_(torch.sort(quantiles, dim=1).values)

    def start_at_histogram_matching(self) -> None:
        """Set the predictor's output to a = 1, b = r = 0 for every frame: the curve starts as
        histogram matching to the source (within the eps bound) instead of the identity."""
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.zero_()
            self.head.bias.view(self.channels, -1)[:, 0] = 1.0

    # -- per-frame curve ----------------------------------------------------------------------
    def sample(self, x: torch.Tensor) -> torch.Tensor:
        """A strided subsample of about SAMPLES pixels per frame, (B, C, h', w')."""
        h, w = int(x.shape[-2]), int(x.shape[-1])
        stride = max(1, round(math.sqrt(h * w / SAMPLES)))
        sample = x[..., stride // 2::stride, stride // 2::stride]
        if sample.shape[-2] < self.grid or sample.shape[-1] < self.grid:
            raise EdgeCalibError(f"curve calibrator: input {h}x{w} is too small for its grid "
                                 f"{self.grid}")
        return sample

    def frame_cdf(self, sample: torch.Tensor) -> torch.Tensor:
        """(B, C, K+1): share of the sampled pixels at or below each knot (comparisons only:
        the same in torch and ONNX Runtime)."""
        pixels = int(sample.shape[-2]) * int(sample.shape[-1])  # static: one Reshape in ONNX
        below = sample.reshape(-1, self.channels, pixels, 1) <= self.knot_x.unsqueeze(1)
        return below.to(sample.dtype).mean(dim=2)

    def thumbnail(self, sample: torch.Tensor) -> torch.Tensor:
        """(B, C * grid * grid): the sample average-pooled to grid x grid."""
        h, w = int(sample.shape[-2]), int(sample.shape[-1])
        pooled = F.avg_pool2d(sample, (h // self.grid, w // self.grid))
        return pooled[..., :self.grid, :self.grid].flatten(1)

    def matched(self, cdf: torch.Tensor) -> torch.Tensor:
        """m_k = Q_src(c_k) in unit coordinates, (B, C, K+1): Q_src interpolated linearly
        between its stored quantiles (a sum of clamped ramps)."""
        q = (self.source_quantiles - self.lo.reshape(-1, 1)) / self.span.reshape(-1, 1)
        steps = (q[:, 1:] - q[:, :-1]).unsqueeze(1)  # (C, 1, J)
        ramps = torch.clamp(cdf.unsqueeze(-1) * QUANTILES
                            - torch.arange(QUANTILES, device=cdf.device), 0, 1)  # (B, C, K+1, J)
        return q[:, :1].unsqueeze(0) + (ramps * steps).sum(-1)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The predictor's hidden features from the frame's CDF at the knots and its
        thumbnail, and that CDF (B, C, K+1)."""
        sample = self.sample(x)
        cdf = self.frame_cdf(sample)
        return self.predictor(torch.cat([cdf.flatten(1), self.thumbnail(sample)], 1)), cdf

    def knot_offsets(self, features: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """d_k, the curve minus the identity at the knots in unit coordinates, (B, C, K+1), from
        ``features(x)``."""
        c, k = self.channels, self.knots
        hidden, cdf = features
        out = self.head(hidden).reshape(-1, c, k + 2)
        a, b, r = out[..., :1], out[..., 1:2], out[..., 2:]
        m = self.matched(cdf)
        matched = torch.log(torch.clamp((m[..., 1:] - m[..., :-1]) * k, min=1e-6))
        z = torch.clamp(a * matched + r, MIN_LOG_SLOPE, MAX_LOG_SLOPE)
        d = a * m[..., :1] + b + torch.matmul(torch.exp(z) - 1, self.cumulative)
        return torch.minimum(torch.maximum(d, self.offset_low), self.offset_high)

    def output_table(self, features: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """(B, C, L): the curve's output at each input level, normalised input units, from
        ``features(x)``."""
        return (self.level_values
                + torch.matmul(self.knot_offsets(features), self.to_levels) * self.span)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        # x * level_scale + level_offset as one per-channel affine pass (a BatchNormalization
        # node in ONNX, fused by TensorRT; a Mul and an Add cost ORT 12% more here)
        affine = F.batch_norm(x, self.zeros, self.ones, self.level_scale, self.level_offset,
                              eps=0.0)
        level = torch.clamp(affine, 0, LEVELS - 1).long()
        c, h, w = self.channels, int(x.shape[-2]), int(x.shape[-1])  # static shapes in ONNX
        y = torch.gather(self.output_table(features), 2, level.reshape(-1, c, h * w))
        if self.matrix_head is None:
            return y.reshape(-1, c, h, w)
        ab = self.matrix_head(features[0]).reshape(-1, c, c + 1)
        h_mix = torch.matmul(ab[..., :c], y) + ab[..., c:]
        pixels = x.reshape(-1, c, h * w)
        delta = torch.clamp(y - pixels + self.eps * torch.tanh(h_mix), -self.eps, self.eps)
        return self.clamp_to_range((pixels + delta).reshape(-1, c, h, w))


def histogram_matching(channels: int, lo, hi, quantiles: torch.Tensor) -> CurveCalibrator:
    """Per-frame histogram matching to the source as a curve calibrator with no training: the
    predictor's output fixed at a = 1, b = r = 0, 64 knots, no bound (eps = the input range)."""
    span = float((torch.as_tensor(hi, dtype=torch.float32)
                  - torch.as_tensor(lo, dtype=torch.float32)).max())
    g = CurveCalibrator(channels, eps=2 * span, lo=lo, hi=hi, knots=64, hidden=1, grid=1)
    g.set_source_quantiles(quantiles)
    g.start_at_histogram_matching()
    return g.eval()
