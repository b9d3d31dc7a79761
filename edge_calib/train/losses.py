"""The losses of the light-weight calibrator (Ye et al., CVPR 2020, eq. 5-7).

Groups: g = 0 source images x_s (G1), 1 target images x_t (G2), 2 calibrated source G(x_s)
(G3), 3 calibrated target G(x_t) (G4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GroupDiscriminatorLoss(nn.Module):
    """4-way cross-entropy of a discriminator over the four groups (eq. 5 pixel, eq. 6 feature):

        L_D = sum_{g=0..3} (1/n_g) sum_i -log softmax(D(z_i^g))_g

    ``logits`` is a sequence of four (n_g, 4) tensors, one per group, in group order.
    """

    def forward(self, logits):
        return sum(F.cross_entropy(lg, torch.full((lg.shape[0],), g, dtype=torch.long,
                                                  device=lg.device))
                   for g, lg in enumerate(logits))


class CalibratorAdversarialLoss(nn.Module):
    """Calibrator loss (eq. 7): both discriminators should label G3 and G4 as G1 (source):

        L_G = w_t * [w_pix CE(D_pix(G(x_t)), 0) + w_feat CE(D_feat(F(G(x_t))), 0)]
            + w_s * [w_pix CE(D_pix(G(x_s)), 0) + w_feat CE(D_feat(F(G(x_s))), 0)]

    The w_s (source) terms keep the source domain intact; the w_t (target) terms adapt.
    Reference weights: w_t = 1.0, w_s = 0.1 (digits) or 0.2 (segmentation).
    """

    def __init__(self, w_target=1.0, w_source=0.1, w_pixel=1.0, w_feature=1.0):
        super().__init__()
        self.w_target, self.w_source = w_target, w_source
        self.w_pixel, self.w_feature = w_pixel, w_feature

    @staticmethod
    def _as_source(logits):
        return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long,
                                                   device=logits.device))

    def forward(self, pix_cal_target, feat_cal_target, pix_cal_source, feat_cal_source):
        target = (self.w_pixel * self._as_source(pix_cal_target)
                  + self.w_feature * self._as_source(feat_cal_target))
        source = (self.w_pixel * self._as_source(pix_cal_source)
                  + self.w_feature * self._as_source(feat_cal_source))
        return self.w_target * target + self.w_source * source


def prediction_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy of softmax predictions: -(1/n) sum_i sum_k p_ik log p_ik."""
    logp = F.log_softmax(logits, dim=1)
    return -(logp.exp() * logp).sum(dim=1).mean()


class SourceConsistencyLoss(nn.Module):
    """Keeps the frozen network's own predictions on calibrated source images (no labels):

        L_cons = (1/N) sum_n KL(p_n || q_n) = (1/N) sum_n sum_k p_nk (log p_nk - log q_nk)

    p = softmax F(x_s), q = softmax F(G(x_s)); n runs over the images (classification) or over
    every pixel of every image (segmentation, logits (B, K, H, W)).
    """

    def forward(self, logits_source, logits_calibrated_source):
        log_p = F.log_softmax(logits_source, dim=1)
        log_q = F.log_softmax(logits_calibrated_source, dim=1)
        return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()


class PixelHistogramLoss(nn.Module):
    """Per-frame, per-channel 1-D Wasserstein-1 distance between a calibrated target image's
    pixel values and the source images' (what histogram matching to the source minimises):

        L_hist = (1/(B C m)) sum_b sum_c sum_i | sort(a_bc)_i - sort(s_c)_i |

    a_bc: m values of channel c drawn at random from calibrated target image b; s_c: m values
    of channel c drawn at random from the whole source batch.
    """

    def __init__(self, samples: int = 4096):
        super().__init__()
        self.samples = samples

    def _sample(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, m) values drawn uniformly with replacement per image."""
        b, c = x.shape[:2]
        flat = x.reshape(b, c, -1)
        pick = torch.randint(flat.shape[2], (b, 1, self.samples)).to(x.device)
        return flat.gather(2, pick.expand(b, c, self.samples))

    def forward(self, calibrated_target, source):
        a = self._sample(calibrated_target).sort(dim=2).values
        pooled = source.transpose(0, 1).reshape(1, source.shape[1], -1, 1)  # (1, C, B*H*W, 1)
        s = self._sample(pooled).sort(dim=2).values
        return (a - s).abs().mean()


class SourceStatsLoss(nn.Module):
    """Distance of the frozen model's activation statistics on calibrated target images to
    those it has on source images (recorded), averaged over taps l and channels c:

        L_stats = (1/L) sum_l (1/C_l) sum_c [ (mu_lc - m_lc)^2 / (v_lc + d)
                                              + (log(s2_lc + d) - log(v_lc + d))^2 ]

    mu, s2: mean and variance of tap l's channel c over the batch (and positions) of calibrated
    target images; m, v: the recorded source mean and variance; d = 1e-5. The mean gap is
    measured in source standard deviations and the variance gap as a log-ratio, so every layer
    weighs the same whatever its scale (cf. the BN-statistics losses of Hou & Zheng 2020 and
    VPTTA, and ActMAD's moment matching).
    """

    def __init__(self, means, variances, floor: float = 1e-5):
        super().__init__()
        self.means = [m.float() for m in means]
        self.variances = [v.float() for v in variances]
        self.floor = floor

    def forward(self, moments):
        """``moments``: per tap (mean, variance) of the current batch, as from ``tap_moments``."""
        terms = []
        for (mu, s2), m, v in zip(moments, self.means, self.variances):
            m, v = m.to(mu.device), v.to(mu.device)
            mean_gap = (mu - m) ** 2 / (v + self.floor)
            var_gap = (torch.log(s2 + self.floor) - torch.log(v + self.floor)) ** 2
            terms.append((mean_gap + var_gap).mean())
        return torch.stack(terms).mean()


class MarginalKLLoss(nn.Module):
    """Keeps the frozen model's predictions on calibrated target images as diverse as on the
    source: KL from the batch's mean prediction to the recorded source class marginal pi,

        L_marg = sum_k pbar_k (log pbar_k - log pi_k),   pbar = (1/N) sum_n softmax(z_n)

    n over images (and pixels), of every rank's shard when ``mean_over_ranks`` is given
    (data-parallel training). With a uniform pi it is the diversity term of information
    maximisation (-H(pbar) + log K); with the entropy term it is its whole objective.
    """

    def __init__(self, marginal: torch.Tensor, floor: float = 1e-8):
        super().__init__()
        self.log_marginal = torch.log(marginal.float().clamp(min=floor))

    def forward(self, logits, mean_over_ranks=None):
        p = F.softmax(logits, dim=1)
        pbar = p.transpose(0, 1).reshape(p.shape[1], -1).mean(1)
        if mean_over_ranks is not None:
            pbar = mean_over_ranks(pbar)
        log_pbar = torch.log(pbar.clamp(min=1e-12))
        return (pbar * (log_pbar - self.log_marginal.to(pbar.device))).sum()
