"""Every loss recomputed by hand with torch.nn.functional."""

import torch
import torch.nn.functional as F

from edge_calib.train.losses import (
    CalibratorAdversarialLoss,
    GroupDiscriminatorLoss,
    MarginalKLLoss,
    PixelHistogramLoss,
    SourceConsistencyLoss,
    SourceStatsLoss,
    prediction_entropy,
)
from edge_calib.train.source_stats import tap_moments


def test_group_discriminator_loss_by_hand():
    torch.manual_seed(0)
    logits = [torch.randn(n, 4) for n in (5, 3, 5, 3)]
    expected = 0.0
    for g, lg in enumerate(logits):
        logp = F.log_softmax(lg, dim=1)
        expected = expected + (-logp[:, g]).mean()
    assert torch.allclose(GroupDiscriminatorLoss()(logits), expected)


def test_calibrator_loss_by_hand():
    torch.manual_seed(1)
    pt, ft, ps, fs = (torch.randn(6, 4) for _ in range(4))
    loss = CalibratorAdversarialLoss(w_target=1.0, w_source=0.1, w_pixel=0.5, w_feature=2.0)
    g1 = lambda z: -F.log_softmax(z, 1)[:, 0].mean()  # noqa: E731  "labelled as source"
    expected = 1.0 * (0.5 * g1(pt) + 2.0 * g1(ft)) + 0.1 * (0.5 * g1(ps) + 2.0 * g1(fs))
    assert torch.allclose(loss(pt, ft, ps, fs), expected)


def test_calibrator_loss_gradient_flows_to_inputs_only_through_both_terms():
    pt = torch.randn(4, 4, requires_grad=True)
    ps = torch.randn(4, 4, requires_grad=True)
    CalibratorAdversarialLoss(w_source=0.0)(pt, pt.detach(), ps, ps.detach()).backward()
    assert pt.grad.abs().sum() > 0 and ps.grad.abs().sum() == 0


def test_prediction_entropy_by_hand():
    logits = torch.tensor([[0.0, 0.0], [10.0, -10.0]])
    p = F.softmax(logits, 1)
    expected = -(p * p.log()).sum(1).mean()
    assert torch.allclose(prediction_entropy(logits), expected)
    assert abs(prediction_entropy(torch.zeros(1, 4)).item() - torch.log(torch.tensor(4.0)).item()) < 1e-6


def test_source_consistency_loss_by_hand_on_dense_logits():
    torch.manual_seed(2)
    raw, cal = torch.randn(2, 5, 3, 4), torch.randn(2, 5, 3, 4)
    p = F.softmax(raw, 1).permute(0, 2, 3, 1).reshape(-1, 5)
    log_q = F.log_softmax(cal, 1).permute(0, 2, 3, 1).reshape(-1, 5)
    expected = F.kl_div(log_q, p, reduction="batchmean")  # sum_k p (log p - log q), per pixel
    assert torch.allclose(SourceConsistencyLoss()(raw, cal), expected)
    assert SourceConsistencyLoss()(raw, raw).abs() < 1e-6  # the identity costs nothing


def test_pixel_histogram_loss_by_hand():
    torch.manual_seed(3)
    target, source = torch.rand(2, 3, 8, 8), torch.rand(4, 3, 8, 8) - 0.5
    loss = PixelHistogramLoss(samples=64)
    torch.manual_seed(4)
    got = loss(target, source)
    torch.manual_seed(4)  # the same draws, written out
    pick_t = torch.randint(64, (2, 1, 64))
    pick_s = torch.randint(4 * 64, (1, 1, 64))
    a = target.reshape(2, 3, 64).gather(2, pick_t.expand(2, 3, 64)).sort(2).values
    pooled = source.permute(1, 0, 2, 3).reshape(1, 3, -1)
    s = pooled.gather(2, pick_s.expand(1, 3, 64)).sort(2).values
    assert torch.allclose(got, (a - s).abs().mean())
    # a constant shift of every pixel by c costs exactly |c|
    torch.manual_seed(5)
    x = torch.rand(1, 3, 8, 8)
    assert torch.allclose(PixelHistogramLoss(samples=10_000)(x + 0.25, x).detach(),
                          torch.tensor(0.25), atol=0.02)


def test_source_stats_loss_by_hand():
    """Two taps: a dense (B, C, H, W) activation and a (B, C) one, against recorded moments."""
    torch.manual_seed(6)
    dense, flat = torch.randn(3, 4, 5, 6) * 2 + 1, torch.randn(7, 3)
    means, variances = [torch.randn(4), torch.randn(3)], [torch.rand(4) + 0.1, torch.rand(3) + 0.1]
    d = 1e-5
    expected = 0.0
    for x, m, v in ((dense, means[0], variances[0]), (flat, means[1], variances[1])):
        rows = x.transpose(0, 1).reshape(x.shape[1], -1)  # channel c: every sample and position
        mu = rows.mean(1)
        s2 = ((rows - mu[:, None]) ** 2).mean(1)
        expected = expected + ((mu - m) ** 2 / (v + d)
                               + (torch.log(s2 + d) - torch.log(v + d)) ** 2).mean() / 2
    image = torch.zeros(3, 3, 8, 8)  # the first tap is the image: left out
    got = SourceStatsLoss(means, variances)(tap_moments([image, dense, flat]))
    assert torch.allclose(got, expected)
    # its own moments cost nothing
    own = tap_moments([image, dense])
    assert SourceStatsLoss([own[0][0]], [own[0][1]])(own).abs() < 1e-10


def test_marginal_kl_loss_by_hand_on_dense_logits():
    torch.manual_seed(7)
    logits, prior = torch.randn(2, 5, 3, 4), torch.softmax(torch.randn(5), 0)
    pbar = F.softmax(logits, 1).mean(dim=(0, 2, 3))
    expected = (pbar * (pbar.log() - prior.log())).sum()
    assert torch.allclose(MarginalKLLoss(prior)(logits), expected)
    uniform = torch.full((5,), 0.2)  # with a uniform prior: log K - H(pbar), IM's diversity term
    entropy = -(pbar * pbar.log()).sum()
    assert torch.allclose(MarginalKLLoss(uniform)(logits), torch.log(torch.tensor(5.0)) - entropy)
