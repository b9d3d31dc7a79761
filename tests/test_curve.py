"""The curve calibrator: monotone, bounded, exactly the identity untrained, and histogram
matching to the source when its predictor says so (checked against the numpy baseline on real
CamVid frames); deployable histogram matching through a bundle."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edge_calib.cli import main
from edge_calib.models.calibrators import make_calibrator, parse_size
from edge_calib.models.calibrators.curve import LEVELS, histogram_matching
from edge_calib.core.spec import CAMVID_RGB180, DIGITS_RGB32, InputSpec

IMAGENET = InputSpec(40, 56, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def every_level(spec: InputSpec, frames: int = 2) -> np.ndarray:
    """Normalised frames whose pixels run through all 256 levels of every channel."""
    ramp = np.tile(np.arange(LEVELS, dtype=np.uint8), spec.height * spec.width // LEVELS + 1)
    u8 = ramp[:spec.height * spec.width].reshape(1, spec.height, spec.width, 1)
    u8 = np.repeat(np.repeat(u8, spec.channels, axis=3), frames, axis=0)
    return spec.normalize(u8)


@pytest.mark.parametrize("spec", [DIGITS_RGB32, IMAGENET], ids=["digits", "imagenet-norm"])
@pytest.mark.parametrize("perturbation", ["symmetric", "one-sided"])
def test_curve_is_monotone_and_bounded_whatever_its_weights(spec, perturbation):
    torch.manual_seed(0)
    eps = 0.4
    g = make_calibrator({"arch": "curve", **parse_size("curve", "small"), "eps": eps,
                         "perturbation": perturbation}, spec.channels, spec.lo, spec.hi).eval()
    for p in g.parameters():
        torch.nn.init.normal_(p, std=2.0)
    g.set_source_quantiles(torch.sort(torch.randn(3, 65), dim=1).values)
    x = torch.from_numpy(every_level(spec))
    with torch.no_grad():
        table = g.output_table(g.features(x))  # (B, C, L): the curve at every level
        y = g(x)
        off_grid = torch.rand(4, *spec.shape) * (g.hi - g.lo) + g.lo  # between levels too
        y_off = g(off_grid)
    assert (table[..., 1:] >= table[..., :-1] - 1e-6).all()
    assert (table.max(-1).values - table.min(-1).values).min() > 0.1  # not trivially flat
    for inputs, outputs in ((x, y), (off_grid, y_off)):
        assert (outputs - inputs).abs().max() <= eps + 1e-6
        assert ((outputs >= g.lo - 1e-6) & (outputs <= g.hi + 1e-6)).all()
    if perturbation == "one-sided":
        assert (y - x).min() >= -1e-6  # it only brightens
    assert (y - x).abs().max() > 0.5 * eps


def test_histogram_matching_curve_matches_the_numpy_baseline_on_real_frames(camvid_root):
    """Dusk frames matched to the day frames' pixels: the curve (64 knots, quantiles at 1/64, the
    frame's CDF from about 2048 of its pixels) against per-frame histogram specification in
    numpy, on the real frames. The numpy version sends each level to the top of its share of
    the CDF, the curve interpolates: they differ by a few levels where the correction is tens."""
    from edge_calib.data import load_dataset
    from edge_calib.imaging.photometric import HistogramMatch
    from edge_calib.train.source_stats import pixel_quantiles
    from edge_calib.train.tensors import DomainData

    spec = CAMVID_RGB180
    size = (spec.height, spec.width)
    day = load_dataset("camvid:day", "train", camvid_root, image_size=size)
    dusk = load_dataset("camvid:dusk", "test", camvid_root, image_size=size).subset(6)
    dusk.images = spec.resize_uint8(dusk.images)
    g = histogram_matching(3, spec.lo, spec.hi, pixel_quantiles(DomainData(day, spec)))
    with torch.no_grad():
        curve = g(torch.from_numpy(spec.normalize(dusk.images))).numpy()
    numpy_hm = spec.normalize(HistogramMatch(spec.resize_uint8(day.images))(dusk.images))
    level = 2 / 255  # one 8-bit level in these units
    original = spec.normalize(dusk.images)
    correction = np.abs(original - numpy_hm).mean()
    assert correction > 20 * level  # dusk really moves
    assert np.abs(curve - numpy_hm).mean() < 0.15 * correction
    assert np.abs(curve - original).mean() > 0.85 * correction


def test_histogram_matching_ships_in_a_bundle(trained_dtn, shared_data, tmp_path):
    """`export --calibrator lowlight=histogram:mnist:lowlight`: the deployed (ONNX Runtime)
    histogram matching scores what the numpy baseline does on the same frames."""
    runner = CliRunner()
    out = tmp_path / "bundle"
    r = runner.invoke(main, ["export", "--classifier", str(trained_dtn), "--calibrator",
                             "lowlight=histogram:mnist:lowlight", "--calibrator", "mnist=identity",
                             "--out", str(out), "--data-root", str(shared_data), "--quiet",
                             "--no-auto-domain"])
    assert r.exit_code == 0, r.output
    common = ["--dataset", "mnist:lowlight", "--split", "test", "--max-samples", "1000",
              "--data-root", str(shared_data), "--json"]
    deployed = runner.invoke(main, ["eval", "--deploy", str(out), "--domain", "lowlight",
                                    *common])
    baseline = runner.invoke(main, ["eval", "--classifier", str(trained_dtn), "--photometric",
                                    "histogram", "--reference", "mnist", *common])
    source_only = runner.invoke(main, ["eval", "--classifier", str(trained_dtn), *common])
    for r in (deployed, baseline, source_only):
        assert r.exit_code == 0, (r.output, r.exception)
    acc = {name: json.loads(r.output.strip().splitlines()[-1])["accuracy"]
           for name, r in (("deployed", deployed), ("numpy", baseline),
                           ("source", source_only))}
    assert acc["numpy"] > acc["source"] + 2  # the correction matters on this shift
    assert abs(acc["deployed"] - acc["numpy"]) <= 1.5


def test_histogram_domain_needs_recorded_statistics(trained_dtn, tmp_path):
    from edge_calib.models.store import load_classifier

    clf = load_classifier(trained_dtn)
    clf.source_stats = None
    bare = tmp_path / "bare.pt"
    clf.save(bare)
    r = CliRunner().invoke(main, ["export", "--classifier", str(bare), "--calibrator",
                                  "lowlight=histogram", "--out", str(tmp_path / "b"), "--quiet"])
    assert r.exit_code != 0
    assert "has no recorded source statistics" in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()


def test_init_histogram_starts_the_curve_at_histogram_matching(trained_dtn, digits, tmp_path):
    """--init histogram: before any step the trainer's curve (and its EMA copy) computes what
    the deployable histogram-matching curve computes on the same frames; the default starts at
    the identity; a family without histogram matching refuses the option in one line."""
    from edge_calib.core.errors import EdgeCalibError
    from edge_calib.models.store import load_classifier
    from edge_calib.train.calibrate import CalibratorConfig, CalibratorTrainer
    from edge_calib.train.loop import state_paths

    clf = load_classifier(trained_dtn)
    stats = clf.source_stats
    x = digits["usps_train"].batch(np.arange(16), "cpu")
    hm = histogram_matching(3, clf.spec.lo, clf.spec.hi, stats.pixel_quantiles)
    for init in ("histogram", "identity"):
        cfg = CalibratorConfig(epochs=1, batch_size=8, arch="curve", size={"knots": 64},
                               objective="stats", eps=2.0, init=init)
        trainer = CalibratorTrainer(clf, digits["mnist_train"], digits["usps_train"], cfg,
                                    torch.device("cpu"), *state_paths(tmp_path / f"{init}.pt"))
        with torch.no_grad():
            for g in (trainer.G, trainer.G_ema):
                out = g.eval()(x)
                expected = hm(x) if init == "histogram" else x
                assert torch.allclose(out, expected, atol=1e-5), init
        if init == "histogram":
            assert not torch.allclose(out, x, atol=1e-2)  # the digits do move
    with pytest.raises(EdgeCalibError, match="--init histogram needs a family"):
        CalibratorConfig(arch="thumbnail", init="histogram").validate()


def test_colour_matrix_after_the_curve_recomputed_by_hand(digits):
    """matrix=1: G'(x) = clamp(x + clamp(y - x + eps tanh(A y + b), -eps, eps), lo, hi) with
    y the same curve without the matrix; it can lower a channel where the input rises (an
    inverted channel), which no curve without it does; checkpoints of curves without the
    matrix keep their fingerprints."""
    from edge_calib.models.calibrators import fingerprint_identity

    spec, eps = DIGITS_RGB32, 0.8
    config = {"arch": "curve", **parse_size("curve", "small"), "eps": eps}
    plain = make_calibrator(config, 3, spec.lo, spec.hi).eval()
    mixed = make_calibrator({**config, "matrix": 1}, 3, spec.lo, spec.hi).eval()
    torch.manual_seed(0)
    for p in mixed.parameters():
        torch.nn.init.normal_(p, std=0.3)
    plain.load_state_dict({k: v for k, v in mixed.state_dict().items()
                           if not k.startswith("matrix_head")})
    x = torch.from_numpy(spec.preprocess(digits["mnist_test"].images[:8]))
    with torch.no_grad():
        y = plain(x)
        hidden = mixed.predictor(torch.cat([mixed.frame_cdf(mixed.sample(x)).flatten(1),
                                            mixed.thumbnail(mixed.sample(x))], 1))
        ab = mixed.matrix_head(hidden).reshape(-1, 3, 4)
        h = torch.einsum("bij,bjhw->bihw", ab[..., :3], y) + ab[..., 3].reshape(-1, 3, 1, 1)
        expected = torch.clamp(x + torch.clamp(y - x + eps * torch.tanh(h), -eps, eps), -1, 1)
        assert torch.allclose(mixed(x), expected, atol=1e-6)
        assert (mixed(x) - y).abs().max() > 0.1  # the matrix does act
        # an inverted blue channel: A = -4 on blue, nothing else
        for p in mixed.parameters():
            torch.nn.init.zeros_(p)
        mixed.matrix_head.bias.data.view(3, 4)[2, 2] = -4.0
        out = mixed(x)
    bright, dark = x[:, 2] > 0.5, x[:, 2] < -0.5
    assert out[:, 2][bright].mean() < x[:, 2][bright].mean() - 0.5 * eps
    assert out[:, 2][dark].mean() > x[:, 2][dark].mean() + 0.5 * eps
    assert fingerprint_identity(plain.config) == {k: v for k, v in plain.config.items()
                                                  if k != "matrix"}
    assert fingerprint_identity(mixed.config)["matrix"] == 1
