"""Architectures, the calibrator's bound and identity, and the discriminators' inputs."""

import pytest
import torch

from edge_calib.core.errors import EdgeCalibError
from edge_calib.models.calibrators.resnet import ResnetCalibrator
from edge_calib.models.classifiers import build_classifier, count_parameters
from edge_calib.models.discriminators import (
    FeatureDiscriminator,
    PixelDiscriminator,
    shuffled_patches,
)


def test_parameter_counts_match_the_design():
    assert count_parameters(build_classifier("dtn")) == 3_133_962
    assert count_parameters(build_classifier("lenet")) == 431_080
    assert count_parameters(ResnetCalibrator(width=8, blocks=9)) == 180_419
    assert count_parameters(ResnetCalibrator(width=4, blocks=9)) == 45_859
    with pytest.raises(EdgeCalibError, match="unknown architecture 'resnet'"):
        build_classifier("resnet")


def test_classifier_output_shapes():
    assert build_classifier("dtn").eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert build_classifier("lenet").eval()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_untrained_symmetric_calibrator_is_identity():
    g = ResnetCalibrator(width=4, blocks=2, eps=0.3).eval()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    assert torch.equal(g(x), x)


@pytest.mark.parametrize("perturbation", ["symmetric", "one-sided"])
@pytest.mark.parametrize("size", [(32, 32), (30, 45), (17, 64)])
def test_perturbation_bounded_by_eps(perturbation, size):
    torch.manual_seed(0)
    eps = 0.25
    g = ResnetCalibrator(width=4, blocks=1, eps=eps, perturbation=perturbation)
    for p in g.parameters():  # large random weights drive tanh into saturation
        torch.nn.init.normal_(p, std=3.0)
    x = torch.rand(4, 3, *size) * 2 - 1
    y = g(x)
    assert y.shape == x.shape
    assert (y - x).abs().max() <= eps + 1e-6
    assert y.min() >= -1 and y.max() <= 1
    assert (y - x).abs().max() > 0.9 * eps  # the bound is reached, not trivially satisfied
    if perturbation == "one-sided":
        assert (y - x).min() >= -1e-6  # it can only brighten


def test_bad_calibrator_settings():
    with pytest.raises(EdgeCalibError, match="eps must be a positive finite number"):
        ResnetCalibrator(eps=0)
    with pytest.raises(EdgeCalibError, match="perturbation"):
        ResnetCalibrator(perturbation="two-sided")


def test_shuffled_patch_is_a_permuted_window():
    torch.manual_seed(1)
    x = torch.arange(2 * 3 * 10 * 12, dtype=torch.float32).reshape(2, 3, 10, 12)
    flat = shuffled_patches(x, 4)
    assert flat.shape == (2, 3 * 16)
    pixels = flat.reshape(2, 16, 3)
    for b in range(2):
        # channels stay together: each pixel is (v, v + 120, v + 240) of one location
        assert torch.equal(pixels[b, :, 1] - pixels[b, :, 0], torch.full((16,), 120.0))
        loc = (pixels[b, :, 0] - b * 360).long()
        rows, cols = loc // 12, loc % 12
        assert rows.max() - rows.min() == 3 and cols.max() - cols.min() == 3
        assert len(set(loc.tolist())) == 16  # a full 4x4 window, each pixel once
        assert loc.tolist() != sorted(loc.tolist())  # not in raster order: shuffled


def test_patches_cover_the_whole_image():
    torch.manual_seed(2)
    x = torch.arange(32 * 32, dtype=torch.float32).reshape(1, 1, 32, 32).repeat(400, 1, 1, 1)
    tops = shuffled_patches(x, 8).min(dim=1).values // 32
    assert tops.min() == 0 and tops.max() == 32 - 8  # rows from the top to the bottom


def test_discriminators_output_four_groups():
    assert PixelDiscriminator(3, 8)(torch.rand(5, 3, 32, 32)).shape == (5, 4)
    f = FeatureDiscriminator(10)
    assert f(torch.randn(5, 10)).shape == (5, 4)
    assert f(torch.randn(2, 10, 3, 3)).shape == (18, 4)  # dense logits scored per pixel
