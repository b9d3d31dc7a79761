"""--augment: the photometric transform recomputed by hand from the same draws, its blur against
OpenCV's, the choices a segmenter refuses, and a classifier trained with it on real MNIST."""

import dataclasses
import json

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edge_calib.cli import main
from edge_calib.core import augmentations as ranges
from edge_calib.models.classifiers import default_input_spec
from edge_calib.models.store import load_classifier
from edge_calib.train.augment import augmentation, gaussian_blur, photometric_jitter


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("sigma", [0.3, 0.8, 1.5])
def test_gaussian_blur_is_opencvs(sigma):
    rng = np.random.default_rng(0)
    u = rng.random((3, 40, 56)).astype(np.float32)
    radius = max(1, int(np.ceil(3 * sigma)))
    want = cv2.GaussianBlur(u.transpose(1, 2, 0), (2 * radius + 1, 2 * radius + 1), sigma,
                            borderType=cv2.BORDER_REPLICATE).transpose(2, 0, 1)
    got = gaussian_blur(torch.from_numpy(u), sigma).numpy()
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_photometric_jitter_recomputed_from_the_same_draws():
    """Same seed, the draws taken in the transform's order by hand: gain, gamma, contrast,
    colour, the blur coin per image, then sigma for each blurred image."""
    lo, hi = (-1.0, -1.0, -1.0), (1.0, 1.0, 1.0)
    x = torch.rand(6, 3, 24, 32) * 2 - 1
    y = torch.randint(0, 5, (6, 24, 32))
    torch.manual_seed(7)
    got, y_out = photometric_jitter(lo, hi)(x, y)
    assert y_out is y  # masks and labels are left alone

    torch.manual_seed(7)
    b = x.shape[0]
    gain = torch.empty(b, 1, 1, 1).uniform_(*ranges.GAIN)
    gamma = torch.empty(b, 1, 1, 1).uniform_(*ranges.GAMMA)
    contrast = torch.empty(b, 1, 1, 1).uniform_(*ranges.CONTRAST)
    colour = torch.empty(b, 3, 1, 1).uniform_(*ranges.COLOUR)
    coins = torch.rand(b) < ranges.BLUR_PROBABILITY
    u = (x + 1) / 2
    u = (u * gain).clamp(0, 1) ** gamma
    m = u.mean(dim=(1, 2, 3), keepdim=True)
    u = (((u - m) * contrast + m) * colour).clamp(0, 1)
    want = []
    for i in range(b):
        if coins[i]:
            sigma = float(torch.empty(()).uniform_(*ranges.BLUR_SIGMA))
            r = max(1, int(np.ceil(3 * sigma)))
            img = cv2.GaussianBlur(u[i].numpy().transpose(1, 2, 0), (2 * r + 1, 2 * r + 1), sigma,
                                   borderType=cv2.BORDER_REPLICATE)
            want.append(torch.from_numpy(img.transpose(2, 0, 1)))
        else:
            want.append(u[i])
    want = torch.stack(want) * 2 - 1
    assert 0 < int(coins.sum()) < b  # both branches exercised by this seed
    torch.testing.assert_close(got, want, atol=3e-5, rtol=0)
    assert got.min() >= -1 and got.max() <= 1


def test_photometric_jitter_spans_its_ranges_on_a_grey_card():
    """A uniform grey card stays uniform per channel (no pattern is invented) and its level
    lands within the stated ranges: (0.5 g)^gamma k."""
    lo, hi = (0.0,), (1.0,)
    x = torch.full((400, 1, 8, 8), 0.5)
    torch.manual_seed(0)
    out, _ = photometric_jitter(lo, hi)(x, torch.zeros(400))
    levels = out[:, 0, 0, 0]
    assert torch.allclose(out, levels[:, None, None, None].expand_as(out), atol=1e-6)
    low = (0.5 * ranges.GAIN[0]) ** ranges.GAMMA[1] * ranges.COLOUR[0]
    high = (0.5 * ranges.GAIN[1]) ** ranges.GAMMA[0] * ranges.COLOUR[1]
    assert levels.min() >= low - 1e-6 and levels.max() <= high + 1e-6
    assert levels.max() - levels.min() > 0.5 * (high - low)  # the range is used, not a corner


def test_augmentation_choices():
    seg = default_input_spec("lraspp_small")
    clf = default_input_spec("dtn")
    assert augmentation("none", clf, "classification") is None
    for kind in ("geometric", "both"):
        with pytest.raises(Exception, match=f"--augment {kind}: a segmenter"):
            augmentation(kind, seg, "segmentation")
    with pytest.raises(Exception, match="choose one of none, geometric, photometric, both"):
        augmentation("colour", clf, "classification")
    # both = the affine warp, then the photometric jitter, clipped to the input's range
    x = torch.full((4, 3, 32, 32), 0.3)
    torch.manual_seed(1)
    out, _ = augmentation("both", clf, "classification")(x, torch.zeros(4))
    assert not torch.allclose(out, x)
    assert out.min() >= min(clf.lo) and out.max() <= max(clf.hi)


def test_segmenter_refuses_geometric_before_loading_anything(tmp_path):
    r = invoke("train-classifier", "--dataset", "camvid:day", "--arch", "lraspp_small",
               "--augment", "geometric", "--out", tmp_path / "seg.pt",
               "--data-root", tmp_path / "nothing-here")
    assert r.exit_code != 0
    assert "--augment geometric: a segmenter always trains on scaled crops and flips" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not list(tmp_path.iterdir())
    r = invoke("train-classifier", "--dataset", "mnist", "--augment", "colour",
               "--out", tmp_path / "c.pt")
    assert r.exit_code == 2 and "'colour' is not one of" in r.output


def test_classifier_trained_with_photometric_augmentation(tmp_path, shared_data):
    out = tmp_path / "mnist_photometric.pt"
    r = invoke("train-classifier", "--dataset", "mnist", "--arch", "dtn", "--data-root",
               shared_data, "--out", out, "--epochs", 1, "--max-samples", 512, "--batch-size",
               64, "--augment", "photometric", "--quiet")
    assert r.exit_code == 0, r.output
    clf = load_classifier(out)
    assert clf.metrics["augment"] == "photometric"
    assert json.loads(r.output.strip().splitlines()[-1])["source_test_acc"] > 30
    assert dataclasses.asdict(clf.spec) == dataclasses.asdict(default_input_spec("dtn"))
