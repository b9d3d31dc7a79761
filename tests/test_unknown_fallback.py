"""``run --domain auto --unknown histogram``: frames of a domain the bundle does not know are
histogram-matched to the source pixels the bundle records, then run through the frozen model."""

import json
import shutil

import cv2
import numpy as np
from click.testing import CliRunner

from edge_calib.cli import main
from edge_calib.data import load_dataset
from edge_calib.deploy.bundle import MANIFEST, MANIFEST_HASH, file_digest_bytes, open_bundle
from edge_calib.engines import open_engines
from edge_calib.imaging.photometric import HistogramMatch, channel_histograms
from edge_calib.runtime.domain_auto import UNKNOWN
from edge_calib.runtime.testvideo import write_domain_video


def recorded_histograms(bundle_dir) -> np.ndarray:
    bundle = open_bundle(bundle_dir)
    return np.asarray(json.loads(bundle.path(bundle.manifest.source_pixels["file"]).read_text())
                      ["histograms"])


def test_the_bundle_records_the_source_pixels(bundle_dir, digits):
    """The histogram export derives from the model's recorded quantiles agrees with the real
    MNIST training frames' own level histogram (the frames the statistics came from)."""
    histograms = recorded_histograms(bundle_dir)
    assert histograms.shape == (3, 256)
    np.testing.assert_allclose(histograms.sum(axis=1), 1.0, atol=1e-6)
    frames = digits["mnist_train"].images
    direct = channel_histograms(frames).astype(float)
    direct /= direct.sum(axis=1, keepdims=True)
    gap = np.abs(np.cumsum(histograms, axis=1) - np.cumsum(direct, axis=1)).max()
    assert gap < 0.02, gap


def test_unknown_frames_are_histogram_matched_then_run(bundle_dir, shared_data, tmp_path):
    m = load_dataset("mnist", "test", shared_data)
    c = load_dataset("mnist:colour", "test", shared_data)
    video = tmp_path / "v.avi"
    write_domain_video(video, [("mnist", m.images[:30], m.labels[:30]),
                               ("colour", c.images[30:90], c.labels[30:90])])
    preds = tmp_path / "p.jsonl"
    r = CliRunner().invoke(main, ["run", "--deploy", str(bundle_dir), "--input", str(video),
                                  "--domain", "auto", "--unknown", "histogram", "--headless",
                                  "--predictions", str(preds), "--json"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    unknown = [row for row in rows if row["domain"] == UNKNOWN]
    assert len(unknown) >= 40 and all(row["fallback"] == "histogram" for row in unknown)
    assert not any("fallback" in row for row in rows if row["domain"] != UNKNOWN)
    # the same frames by hand: decoded, resized, matched to the recorded histograms, frozen model
    bundle = open_bundle(bundle_dir)
    match = HistogramMatch.from_histograms(recorded_histograms(bundle_dir), "test")
    capture = cv2.VideoCapture(str(video))
    decoded = np.stack([cv2.cvtColor(capture.read()[1], cv2.COLOR_BGR2RGB) for _ in range(90)])
    capture.release()
    x = bundle.spec.normalize(match(bundle.spec.resize_uint8(decoded)))
    with open_engines(bundle) as engines:
        by_hand = {row["index"]: int(engines.infer(None, x[row["index"]:row["index"] + 1])[0]
                                     .argmax()) for row in unknown}
    assert {row["index"]: row["label"] for row in unknown} == by_hand


def test_a_bundle_without_source_pixels_is_one_line(bundle_dir, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    data = json.loads((copy / MANIFEST).read_text())
    data["source_pixels"] = None
    text = json.dumps(data, indent=2)
    (copy / MANIFEST).write_text(text)
    (copy / MANIFEST_HASH).write_text(f"{file_digest_bytes(text.encode())}  {MANIFEST}\n")
    r = CliRunner().invoke(main, ["run", "--deploy", str(copy), "--input", str(tmp_path),
                                  "--domain", "auto", "--unknown", "histogram", "--headless"])
    assert r.exit_code != 0
    assert "--unknown histogram:" in r.output and "records no source pixels" in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


def test_unknown_needs_domain_auto(bundle_dir, tmp_path):
    r = CliRunner().invoke(main, ["run", "--deploy", str(bundle_dir), "--input", str(tmp_path),
                                  "--domain", "mnist", "--unknown", "histogram", "--headless"])
    assert r.exit_code == 2 and "add --domain auto" in r.output


def test_histogram_matching_is_the_documented_formula_on_real_frames(shared_data):
    """v -> min{u : C_ref(u) >= C_frame(v)} per channel, with plain loops over levels, on
    real dusk frames matched to day frames and on grey USPS digits matched to MNIST."""
    pairs = [(load_dataset("camvid:day", "train", shared_data).images[:8],
              load_dataset("camvid:dusk", "test", shared_data).images[:2]),
             (load_dataset("mnist", "train", shared_data).images[:200],
              load_dataset("usps", "test", shared_data).images[:2])]
    for reference, frames in pairs:
        got = HistogramMatch(reference)(frames)
        ref = reference.reshape(-1, reference.shape[-1]) if reference.ndim == 4 else \
            reference.reshape(-1, 1)
        for frame, out in zip(frames, got):
            frame = frame.reshape(-1, ref.shape[1]) if frame.ndim == 3 else frame.reshape(-1, 1)
            out = out.reshape(frame.shape)
            for c in range(frame.shape[1]):
                c_ref = np.cumsum(np.bincount(ref[:, c], minlength=256)) / len(ref)
                c_frame = np.cumsum(np.bincount(frame[:, c], minlength=256)) / len(frame)
                lut = [min(255, int(np.argmax(c_ref >= c_frame[v] - 1e-12))) for v in range(256)]
                assert [lut[v] for v in frame[:, c]] == out[:, c].tolist()
