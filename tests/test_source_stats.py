"""The frozen model's source statistics: recorded on the model as stored (the same layers in its
float, folded and INT8 forms), kept with the checkpoint outside the fingerprint, and the stats
objective that restores them on a real shift without a discriminator."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edge_calib.cli import main
from edge_calib.core.spec import DIGITS_RGB32
from edge_calib.data import load_dataset
from edge_calib.models.store import load_classifier
from edge_calib.train.calibrate import CalibratorConfig, CalibratorTrainer
from edge_calib.train.loop import state_paths
from edge_calib.train.tensors import DomainData
from edge_calib.train.source_stats import (
    activation_taps,
    record_source_stats,
    stats_distance,
    tap_moments,
)


def test_recorded_moments_are_the_pooled_ones_by_hand(trained_dtn, digits):
    """Every image's activations at a tap, pooled: per-channel mean and variance computed here
    from the layer inputs directly."""
    clf = load_classifier(trained_dtn)
    data = digits["mnist_test"]
    stats = record_source_stats(clf.module, data, batch_size=100, max_images=300)
    index = np.sort(np.random.default_rng(0).permutation(len(data))[:300])
    with torch.no_grad(), activation_taps(clf.module) as values:
        logits = clf.module(data.batch(index, "cpu"))
    conv2 = values[1]  # the input of the DTN's second convolution: (300, 64, 16, 16)
    rows = conv2.transpose(0, 1).reshape(conv2.shape[1], -1).double()
    assert torch.allclose(stats.means[0].double(), rows.mean(1), atol=1e-5)
    assert torch.allclose(stats.variances[0].double(), rows.var(1, unbiased=False), atol=1e-5)
    assert torch.allclose(stats.class_marginal, torch.softmax(logits, 1).mean(0), atol=1e-5)
    assert [int(m.numel()) for m in stats.means] == [64, 128, 4096, 512]
    assert stats.pixel_quantiles.shape == (3, 65)


def test_unlabelled_scores_recomputed_by_hand(trained_dtn, shared_data):
    """The information score is H(mean p) - mean H(p) over the images, the entropy the mean
    H(p), recomputed with torch.nn.functional; batching does not change them."""
    import torch.nn.functional as F

    from edge_calib.train.evaluate import unlabelled_scores

    clf = load_classifier(trained_dtn)
    stats = clf.source_stats
    data = DomainData(load_dataset("mnist:haze", "test", shared_data).subset(70), DIGITS_RGB32)
    with torch.no_grad():
        p = F.softmax(clf.module(data.batch(np.arange(70), "cpu")).double(), dim=1)
    entropy = -(p * p.log()).sum(1).mean().item()
    marginal = p.mean(0)
    information = -(marginal * marginal.log()).sum().item() - entropy
    for batch_size in (8, 70):
        scores = unlabelled_scores(clf.module, data, stats, batch_size=batch_size)
        assert scores["entropy"] == pytest.approx(entropy, abs=1e-5)
        assert scores["information"] == pytest.approx(information, abs=1e-5)
    assert 0 < information <= np.log(10)


def test_held_out_is_what_the_subset_leaves(shared_data):
    images = load_dataset("usps", "test", shared_data)
    taken = np.sort(np.random.default_rng(3).permutation(len(images))[:500])
    left = np.setdiff1d(np.arange(len(images)), taken)
    assert np.array_equal(images.subset(500, seed=3).images, images.images[taken])
    held_out = images.held_out(500, seed=3)
    assert np.array_equal(held_out.images, images.images[left])
    assert np.array_equal(held_out.labels, images.labels[left])
    assert len(images.held_out(len(images), seed=3)) == 0


def test_float_folded_and_int8_models_tap_the_same_layers(trained_dtn, int8_dtn, digits):
    """Compression folds BatchNorm and quantises, but the taps stay the same layers, and the
    INT8 model's own record (from compress) is close to the float model's."""
    float_clf, int8_clf = load_classifier(trained_dtn), load_classifier(int8_dtn)
    x = digits["mnist_test"].batch(range(8), "cpu")
    shapes, moments = [], []
    for clf in (float_clf, int8_clf):
        with torch.no_grad(), activation_taps(clf.module) as values:
            clf.module(x)
        shapes.append([tuple(v.shape) for v in values])
        moments.append(tap_moments(values))
    assert shapes[0] == shapes[1]
    a, b = float_clf.source_stats, int8_clf.source_stats
    assert b is not None and b.dataset == "mnist"
    a.check_fits(moments[1], "the INT8 model")  # the float record fits the INT8 model's taps
    # the second convolution's input: the first layer's output, pruned and quantised
    assert torch.corrcoef(torch.stack([a.means[0], b.means[0]]))[0, 1] > 0.9


def test_statistics_ride_outside_the_fingerprint(trained_dtn, tmp_path):
    clf = load_classifier(trained_dtn)
    fingerprint = clf.fingerprint
    assert clf.source_stats is not None  # recorded by train-classifier
    clf.source_stats = None
    clf.save(tmp_path / "bare.pt")
    bare = load_classifier(tmp_path / "bare.pt")
    assert bare.fingerprint == fingerprint and bare.source_stats is None


@pytest.mark.slow
def test_the_stats_objective_restores_the_source_statistics(trained_dtn, digits, shared_data,
                                                            tmp_path):
    """Curve and thumbnail calibrators trained with the stats objective on the real low-light
    camera: the statistics distance on held-out target frames falls, accuracy on them rises,
    no discriminator is trained, and --select stats picks an epoch on held-out frames."""
    from edge_calib.data import load_dataset
    from edge_calib.core.spec import DIGITS_RGB32
    from edge_calib.train.evaluate import accuracy
    from edge_calib.train.tensors import DomainData

    clf = load_classifier(trained_dtn)
    stats = clf.source_stats
    shift_train = DomainData(load_dataset("mnist:lowlight", "train", shared_data).subset(600),
                             DIGITS_RGB32)
    shift_test = DomainData(load_dataset("mnist:lowlight", "test", shared_data).subset(1000),
                            DIGITS_RGB32)
    before = stats_distance(clf.module, shift_test, stats, None, 100)
    source_only = accuracy(clf.module, shift_test)
    for arch in ("curve", "thumbnail"):
        cfg = CalibratorConfig(epochs=3, batch_size=64, arch=arch, objective="stats", lr=3e-3,
                               eps=1.0, ema=0.0, select="stats", holdout=0.1, seed=0)
        trainer = CalibratorTrainer(clf, digits["mnist_train"], shift_train, cfg,
                                    torch.device("cpu"), *state_paths(tmp_path / f"{arch}.pt"))
        d_before = [p.clone() for p in trainer.D_pix.parameters()]
        g, summary = trainer.run(progress=False)
        after = stats_distance(clf.module, shift_test, stats, g, 100)
        assert after < 0.7 * before, arch
        assert accuracy(clf.module, shift_test, g) > source_only + 1.0, arch
        assert all(torch.equal(a, b) for a, b in zip(d_before, trainer.D_pix.parameters()))
        assert "loss_d_pixel" not in trainer.history[-1]
        assert summary.selection["rule"].startswith("lowest source-statistics distance")
        assert summary.selection["epoch"] == 1 + int(np.argmin(
            [h["holdout_stats"] for h in trainer.history]))


def test_eval_unlabelled_and_import_source(trained_dtn, shared_data, tmp_path):
    """`eval --unlabelled` on frames without labels; `train` records the statistics from
    --source when the checkpoint has none."""
    import cv2

    from edge_calib.data import load_dataset

    folder = tmp_path / "frames" / "0001"  # a camera's frames in a numbered sequence folder
    folder.mkdir(parents=True)
    for i, img in enumerate(load_dataset("mnist:haze", "test", shared_data).images[:40]):
        cv2.imwrite(str(folder / f"{i:03d}.png"), img[..., ::-1])
    r = CliRunner().invoke(main, ["eval", "--classifier", str(trained_dtn), "--dataset",
                                  str(tmp_path / "frames"), "--unlabelled", "--json"])
    assert r.exit_code == 0, r.output
    scores = json.loads(r.output.strip().splitlines()[-1])
    assert scores["n"] == 40 and scores["stats_distance"] > 0 and scores["pixel_w1"] > 0
    clf = load_classifier(trained_dtn)
    clf.source_stats = None
    clf.save(tmp_path / "bare.pt")
    r = CliRunner().invoke(main, ["eval", "--classifier", str(tmp_path / "bare.pt"), "--dataset",
                                  str(tmp_path / "frames"), "--unlabelled"])
    assert r.exit_code == 2 and "has no recorded source statistics" in r.output
    r = CliRunner().invoke(main, ["train", "--classifier", str(tmp_path / "bare.pt"), "--source",
                                  "mnist", "--target", str(tmp_path / "frames"), "--domain",
                                  "haze", "--out", str(tmp_path / "h.calib.pt"), "--epochs", "1",
                                  "--max-samples", "64", "--batch-size", "32", "--objective",
                                  "stats", "--calibrator-arch", "curve", "--quiet",
                                  "--data-root", str(shared_data)])
    assert r.exit_code == 0, r.output
    assert "source statistics: recording them on mnist" in r.output
