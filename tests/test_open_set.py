"""Open-set ``--domain auto`` on real frames: digits of a camera shift the bundle was not built
for are reported as ``unknown`` and run through the frozen model alone; the run starts on the
first frames' vote."""

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edge_calib.cli import main
from edge_calib.core.errors import EdgeCalibError
from edge_calib.data import load_dataset
from edge_calib.deploy.bundle import open_bundle
from edge_calib.imaging.domain_features import (FEATURES, FOLDS, K_NEAREST, MARGIN, PERCENTILE,
                                                frame_features, fit_novelty)
from edge_calib.runtime.domain_auto import UNKNOWN, AutoDomain, DomainModel, load_domain_model
from edge_calib.runtime.testvideo import write_domain_video


def domain_model(bundle_dir):
    bundle = open_bundle(bundle_dir)
    return bundle, load_domain_model(bundle.path(bundle.manifest.domain_classifier.file),
                                     bundle.domains)


def test_novelty_ratio_is_the_documented_distance(bundle_dir, shared_data):
    """k-th nearest RMS distance to each domain's references over its radius, recomputed by
    hand from the stored file."""
    bundle, model = domain_model(bundle_dir)
    raw = json.loads(bundle.path(bundle.manifest.domain_classifier.file).read_text())
    frames = bundle.spec.resize_uint8(load_dataset("mnist:colour", "test", shared_data).images[:5])
    z = (frame_features(frames) - np.asarray(raw["mean"])) / np.asarray(raw["std"])
    o = raw["open_set"]
    for k in range(len(raw["domains"])):
        ref = np.asarray(o["references"][k])
        d = np.sort([[np.sqrt(np.mean((zi - r) ** 2)) for r in ref] for zi in z], axis=1)
        np.testing.assert_allclose(model.ratios(z)[:, k], d[:, o["k"] - 1] / o["radii"][k],
                                   rtol=1e-6)
    assert bundle.manifest.domain_classifier.holdout_known >= 94  # out of fold: 1.5 x the 90th pct
    assert bundle.manifest.domain_classifier.novelty == o["rule"]  # the manifest states it
    assert f"blocked {FOLDS}-fold cross-validated" in o["rule"]


@pytest.mark.parametrize("constants", [{}, {"k": 1, "percentile": 90.0, "margin": 2.0}])
def test_radii_come_from_blocked_cross_validation(constants):
    """Each frame's distance is measured to the other blocks only (blocks are stretches in
    file order, a frame and its rendering share one), and the radius is margin x the
    percentile-th percentile of those distances (the module's constants unless given);
    recomputed with plain loops."""
    k = constants.get("k", K_NEAREST)
    percentile = constants.get("percentile", PERCENTILE)
    margin = constants.get("margin", MARGIN)
    rng = np.random.default_rng(0)
    z = rng.normal(size=(40, 4))
    order = np.tile(np.arange(20), 2)
    novelty, ratios = fit_novelty([(z, order)], **constants)
    distances = []
    for i in range(40):
        block = order[i] * FOLDS // 20
        others = [np.sqrt(np.mean((z[i] - z[j]) ** 2)) for j in range(40)
                  if order[j] * FOLDS // 20 != block]
        distances.append(sorted(others)[k - 1])
    radius = margin * np.percentile(distances, percentile)
    assert novelty["radii"][0] == pytest.approx(radius)
    np.testing.assert_allclose(ratios[0], np.asarray(distances) / radius)
    assert len(novelty["references"][0]) == 40
    assert (novelty["k"], novelty["percentile"], novelty["margin"]) == (k, percentile, margin)


def test_features_see_colour_that_grey_statistics_miss(shared_data):
    """The same recoloured digits with red and blue swapped: the grey image is identical, the
    features are not (a grey-level feature could not tell these frames apart)."""
    frames = load_dataset("mnist:colour", "test", shared_data).images[:50]
    swapped = frames[..., ::-1].copy()
    np.testing.assert_allclose(frames.astype(float).mean(-1), swapped.astype(float).mean(-1))
    f, g = frame_features(frames), frame_features(swapped)
    assert np.abs(f - g)[:, :24].sum(axis=1).min() > 0.1  # the per-channel histograms
    np.testing.assert_allclose(f[:, 30:46], g[:, 30:46], atol=1e-6)  # grey profiles agree


def test_frames_of_an_unseen_shift_are_unknown_and_run_the_frozen_model(bundle_dir, shared_data,
                                                                       tmp_path):
    """MNIST frames, then the same digits recoloured (mnist:colour, not in the bundle), then
    USPS frames: mnist from the first frame, unknown within the window, then usps."""
    m = load_dataset("mnist", "test", shared_data)
    c = load_dataset("mnist:colour", "test", shared_data)
    u = load_dataset("usps", "test", shared_data)
    video = tmp_path / "open.avi"
    truth = write_domain_video(video, [("mnist", m.images[:40], m.labels[:40]),
                                       ("colour", c.images[40:100], c.labels[40:100]),
                                       ("usps", u.images[:40], u.labels[:40])])
    preds = tmp_path / "p.jsonl"
    r = CliRunner().invoke(main, ["run", "--deploy", str(bundle_dir), "--input", str(video),
                                  "--domain", "auto", "--headless", "--predictions", str(preds),
                                  "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output.strip().splitlines()[-1])
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert rows[0]["domain"] == "mnist"  # the first frames' vote, not the bundle's first domain
    assert all(row["domain"] == "mnist" for row in rows[:40])
    switches = [(s["from"], s["to"], s["frame"]) for s in summary["switch_log"]]
    assert [s[:2] for s in switches] == [("mnist", UNKNOWN), (UNKNOWN, "usps")], switches
    assert 40 <= switches[0][2] <= 40 + 15 and 100 <= switches[1][2] <= 100 + 15
    colour = [row for row in rows if truth["frames"][row["index"]]["domain"] == "colour"]
    votes = [row["auto"]["predicted"] for row in colour]
    assert votes.count(UNKNOWN) >= 0.9 * len(votes), votes
    assert all(row["auto"]["fit"] > 1 for row in colour if row["auto"]["predicted"] == UNKNOWN)
    assert summary["domain_frames"][UNKNOWN] >= 45
    # unknown frames ran the frozen model alone: the same labels as the identity domain mnist
    from edge_calib.engines import open_engines

    bundle = open_bundle(bundle_dir)
    capture = cv2.VideoCapture(str(video))  # the frames as the run decoded them
    decoded = [cv2.cvtColor(capture.read()[1], cv2.COLOR_BGR2RGB) for _ in range(100)][80:]
    capture.release()
    with open_engines(bundle) as engines:
        x = bundle.spec.preprocess(np.stack(decoded))
        alone = [int(engines.infer(None, x[i:i + 1])[0].argmax()) for i in range(20)]
    reported = {row["index"]: row["label"] for row in rows if row["domain"] == UNKNOWN}
    assert [reported[80 + i] for i in range(20) if 80 + i in reported] == \
        [alone[i] for i in range(20) if 80 + i in reported]


def test_known_domains_stay_known_on_real_frames(bundle_dir, shared_data):
    """Held-out real MNIST and USPS test frames (the bundle learnt from train frames) are
    almost never unknown."""
    bundle, model = domain_model(bundle_dir)
    auto = AutoDomain(model)
    for name in ("mnist", "usps"):
        images = load_dataset(name, "test", shared_data).images[:300]
        x = bundle.spec.resize_uint8(images)
        votes = [auto.predict(x[i:i + 1])["predicted"] for i in range(len(x))]
        assert votes.count(UNKNOWN) <= 0.05 * len(votes), (name, votes.count(UNKNOWN))
        assert votes.count(name) >= 0.9 * len(votes)


def test_radius_scale_widens_the_domains(bundle_dir, shared_data):
    """The same recoloured frames: unknown at the bundle's radii, known with them scaled far
    out (``run --auto-radius-scale``), and the fit reported is the same."""
    bundle, model = domain_model(bundle_dir)
    x = bundle.spec.resize_uint8(load_dataset("mnist:colour", "test", shared_data).images[:20])
    strict = AutoDomain(model)
    loose = AutoDomain(model, radius_scale=1e6)
    for i in range(len(x)):
        a, b = strict.predict(x[i:i + 1]), loose.predict(x[i:i + 1])
        assert a["fit"] == b["fit"] and b["predicted"] in bundle.domains
    assert [strict.predict(x[i:i + 1])["predicted"] for i in range(20)].count(UNKNOWN) >= 18


def test_window_hysteresis_with_unknown():
    z = np.zeros(FEATURES)
    auto = AutoDomain(DomainModel(["a", "b"], z, z + 1, np.zeros((FEATURES, 2)), np.zeros(2)),
                      window=5, threshold=0.6)
    assert auto.update(None, "b") == "b"  # the first frame's vote starts the run
    assert auto.update("b", "a") is None  # a tie while filling keeps the current domain
    assert auto.update("b", "a") == "a"  # majority so far while the window fills
    for vote in ("a", "a"):
        assert auto.update("a", vote) is None
    assert [auto.update("a", UNKNOWN) for _ in range(3)] == [None, None, UNKNOWN]  # 3 of 5


def test_a_broken_open_set_is_refused_in_one_line(bundle_dir, tmp_path):
    bundle, _ = domain_model(bundle_dir)
    model = json.loads(bundle.path(bundle.manifest.domain_classifier.file).read_text())
    path = tmp_path / "dc.json"
    for change, message in [(lambda m: m["open_set"].update(radii=[1.0]), "reference sets shaped"),
                            (lambda m: m["open_set"].update(radii=[1.0, -1.0]),
                             "must be finite, the radii and k positive"),
                            (lambda m: m["open_set"]["references"][0][0].pop(), "references are unreadable"),
                            (lambda m: m["open_set"]["references"].__setitem__(
                                0, [r[:-1] for r in m["open_set"]["references"][0]]),
                             r"reference sets shaped \[\(\d+, 49\)"),
                            (lambda m: m.update(features="grey-stats-v1"),
                             "uses features 'grey-stats-v1', this release reads")]:
        broken = json.loads(json.dumps(model))
        change(broken)
        path.write_text(json.dumps(broken))
        with pytest.raises(EdgeCalibError, match=message):
            load_domain_model(path, bundle.domains)


@pytest.mark.parametrize("name", ["unknown", "auto"])
def test_reserved_domain_names_are_refused(trained_dtn, tmp_path, name):
    r = CliRunner().invoke(main, ["export", "--classifier", str(trained_dtn), "--calibrator",
                                  f"{name}=identity", "--out", str(tmp_path / "b"),
                                  "--no-auto-domain"])
    assert r.exit_code == 2 and f"domain {name!r} is reserved" in r.output
    assert not (tmp_path / "b").exists()
