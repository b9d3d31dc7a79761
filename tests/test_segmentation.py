"""The segmentation path on real CamVid frames: metrics by hand, the segmenter's ONNX and INT8
graphs, the fused graph with a calibrator, and the runtime's overlay and predictions."""

import copy
import json

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from edge_calib.cli import main
from edge_calib.models.fold import fold_batchnorm
from edge_calib.data import load_dataset
from edge_calib.export.onnx_graphs import export_classifier
from edge_calib.core.metrics import confusion, pixel_distance, segmentation_scores
from edge_calib.models.calibrators import make_calibrator, parse_size
from edge_calib.models.classifiers import build_classifier, default_input_spec
from edge_calib.models.records import CalibratorRecord
from edge_calib.models.store import Classifier, save_calibrator
from edge_calib.runtime.testvideo import write_domain_video


def run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def test_miou_by_hand():
    truth = np.array([[0, 0, 1, 1], [2, 2, 1, 3]])  # 3 = void for 3 classes
    pred = np.array([[0, 1, 1, 1], [2, 0, 1, 2]])
    m = confusion(pred, truth, 3, ignore=3)
    # class 0: tp 1, fn 1 (->1), fp 1 (2->0): IoU 1/3; class 1: tp 3, fp 1: 3/4; class 2: 1/2
    s = segmentation_scores(m, ["a", "b", "c"])
    assert s["per_class_iou"] == {"a": pytest.approx(100 / 3, abs=1e-3), "b": 75.0, "c": 50.0}
    assert s["miou"] == pytest.approx((100 / 3 + 75 + 50) / 3)
    assert s["pixel_accuracy"] == pytest.approx(100 * 5 / 7)
    assert s["labelled_pixels"] == 7
    assert s["fwiou"] == pytest.approx(100 * (2 / 7 / 3 + 3 / 7 * 0.75 + 2 / 7 * 0.5))


@pytest.fixture(scope="module")
def segmenter():
    torch.manual_seed(0)
    module = build_classifier("lraspp_small", 11).eval()
    for m in module.modules():  # non-trivial BatchNorm statistics, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    spec = default_input_spec("lraspp_small")
    from edge_calib.data.camvid import CLASSES
    return Classifier(module, "lraspp_small", spec, 11, list(CLASSES))


@pytest.fixture(scope="module")
def frames(camvid_root):
    dusk = load_dataset("camvid:dusk", "test", camvid_root).subset(6)
    return dusk


def test_segmenter_onnx_and_folding_match_torch(segmenter, frames):
    x = segmenter.spec.preprocess(frames.images)
    with torch.no_grad():
        expected = segmenter.module(torch.from_numpy(x)).numpy()
        folded = fold_batchnorm(segmenter.module)(torch.from_numpy(x)).numpy()
    assert expected.shape == (6, 11, 180, 240)
    assert np.abs(folded - expected).max() <= 1e-3
    graph = export_classifier(segmenter)
    assert np.abs(run(graph, x) - expected).max() <= 1e-4


def test_int8_segmenter_graph_agrees_with_fake_quant(segmenter, frames):
    from edge_calib.compress.pipeline import compress_classifier
    from edge_calib.train.tensors import DomainData

    data = DomainData(frames, segmenter.spec)
    q = compress_classifier(segmenter, "2:4", True, data, progress=False)
    x = data.batch(np.arange(len(data)), "cpu")
    with torch.no_grad():
        fake = q.module(x).argmax(1).numpy()
    for target in ("onnxruntime", "tensorrt"):
        real = run(export_classifier(q, target), x.numpy()).argmax(1)
        assert (real == fake).mean() >= 0.99, target


def test_pruned_segmenter_fine_tunes_on_full_resolution_masks(segmenter, frames):
    """CamVid masks are 480x360, the network's output 240x180: fine-tuning upsamples the logits
    (it used to stop on a size mismatch); pruned weights stay zero and the weights move."""
    from edge_calib.compress.pipeline import compress_classifier
    from edge_calib.train.tensors import DomainData

    data = DomainData(frames, segmenter.spec)
    assert data.labels.shape[-2:] == (360, 480)
    segmenter = copy.deepcopy(segmenter)
    segmenter.module.requires_grad_(False)  # as loaded from a checkpoint
    plain = compress_classifier(segmenter, "2:4", False, None, progress=False)
    tuned = compress_classifier(segmenter, "2:4", False, None, finetune=data, finetune_epochs=1,
                                progress=False)
    assert tuned.metrics["finetune"]["epochs"] == 1
    moved = 0
    for (name, a), b in zip(plain.module.state_dict().items(), tuned.module.state_dict().values()):
        if a.dim() == 4 and a.shape[1] % 4 == 0 and a.shape[1] > 1:
            assert torch.equal(a == 0, b == 0), name  # the 2:4 pattern is kept
        moved += int(not torch.equal(a, b))
    assert moved > 0


@pytest.fixture(scope="module")
def seg_bundle(segmenter, frames, tmp_path_factory):
    """A segmenter with a (random, not identity) thumbnail calibrator for dusk, exported."""
    work = tmp_path_factory.mktemp("seg")
    segmenter.save(work / "seg.pt")
    torch.manual_seed(1)
    spec = segmenter.spec
    g = make_calibrator({"arch": "thumbnail", **parse_size("thumbnail", "small"), "eps": 0.5},
                        3, spec.lo, spec.hi)
    for p in g.parameters():
        torch.nn.init.normal_(p, std=0.2)
    save_calibrator(work / "dusk.calib.pt", g, CalibratorRecord(
        domain="dusk", classifier_fingerprint=segmenter.fingerprint, input_spec=spec,
        source="camvid:day", target="camvid:dusk"))
    r = CliRunner().invoke(main, ["export", "--classifier", str(work / "seg.pt"), "--calibrator",
                                  f"dusk={work / 'dusk.calib.pt'}", "--calibrator", "day=identity",
                                  "--out", str(work / "bundle"), "--no-auto-domain"])
    assert r.exit_code == 0, r.output
    return work / "bundle", g


def test_fused_segmentation_graph(seg_bundle, segmenter, frames):
    bundle, g = seg_bundle
    import onnx
    x = segmenter.spec.preprocess(frames.images)
    fused = onnx.load(str(bundle / "fused/dusk.onnx"))
    separate = run(onnx.load(str(bundle / "classifier.onnx")),
                   run(onnx.load(str(bundle / "calibrators/dusk.onnx")), x))
    assert np.abs(run(fused, x) - separate).max() <= 1e-4
    with torch.no_grad():
        expected = segmenter.module(g(torch.from_numpy(x))).numpy()
    assert np.abs(run(fused, x) - expected).max() <= 1e-4


def test_frame_graphs_give_the_float_graphs_class_maps_on_real_frames(seg_bundle, frames):
    """The runtime's uint8 frame graphs (cast, normalisation and ArgMax inside) against the float
    graphs and a numpy ArgMax, on real CamVid dusk frames, for the fused dusk graph and the
    identity day domain."""
    from edge_calib.deploy.bundle import open_bundle
    from edge_calib.engines import open_engines

    bundle = open_bundle(seg_bundle[0])
    u8 = bundle.spec.resize_uint8(frames.images)
    with open_engines(bundle, frames=True) as engines:
        for domain in ("dusk", "day"):
            for i in range(len(u8)):
                logits, _ = engines.infer(domain, bundle.spec.normalize(u8[i:i + 1]))
                got, _ = engines.infer_frame(domain, u8[i:i + 1])
                assert got["classes"].dtype == np.uint8 and got["classes"].shape == (1, bundle.spec.height, bundle.spec.width)
                assert np.array_equal(got["classes"], logits.argmax(axis=1))


def test_runtime_draws_masks_and_writes_class_fractions(seg_bundle, frames, tmp_path):
    bundle, _ = seg_bundle
    video = tmp_path / "dusk.avi"
    write_domain_video(video, [("dusk", frames.images, None)], size=None)
    preds, out = tmp_path / "p.jsonl", tmp_path / "overlay.avi"
    r = CliRunner().invoke(main, ["run", "--deploy", str(bundle), "--input", str(video),
                                  "--domain", "dusk", "--headless", "--predictions", str(preds),
                                  "--output", str(out), "--json"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(rows) == 6
    for row in rows:
        fractions = row["class_fractions"]
        assert set(fractions) <= {"Sky", "Building", "Pole", "Road", "Pavement", "Tree",
                                  "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist"}
        assert sum(fractions.values()) == pytest.approx(1.0, abs=1e-3)
    cap = cv2.VideoCapture(str(out))
    ok, overlay = cap.read()
    assert ok and overlay.shape == (360, 480, 3)  # the mask is drawn at the camera's size
    original = cv2.VideoCapture(str(video)).read()[1]
    assert np.abs(overlay.astype(int) - original.astype(int)).mean() > 10  # colours blended in


def test_pixel_distance_by_hand():
    # one frame of 4 pixels, one channel: sorted [0, 1, 2, 3]; reference pooled [0, 0, 4, 4]
    frame = np.array([3.0, 0.0, 2.0, 1.0]).reshape(1, 1, 2, 2)
    reference = np.array([0.0, 4.0, 4.0, 0.0]).reshape(2, 1, 1, 2)
    # at quantiles 0, 1/3, 2/3, 1: frame 0, 1, 2, 3; reference 0, 0, 4, 4 -> |.| 0, 1, 2, 1
    assert pixel_distance(frame, reference, quantiles=4) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    frames = rng.random((3, 3, 8, 8))
    assert pixel_distance(frames + 0.25, frames, quantiles=33) > 0.2  # a shift moves it
    assert pixel_distance(frames, frames[:1]) < pixel_distance(frames + 0.25, frames[:1])


def test_eval_on_the_day_validation_split(seg_bundle, camvid_root):
    """eval --split val scores CamVid's day validation frames (retention on the source model's
    own sequence); a dataset without one says so in one line."""
    seg = seg_bundle[0].parent / "seg.pt"
    args = ["eval", "--classifier", str(seg), "--dataset", "camvid:day", "--split", "val",
            "--max-samples", "2", "--json", "--data-root", str(camvid_root)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    result = json.loads(r.output.strip().splitlines()[-1])
    assert result["split"] == "val" and result["n"] == 2 and 0 <= result["miou"] <= 100
    r = CliRunner().invoke(main, ["eval", "--classifier", str(seg), "--dataset", "mnist",
                                  "--split", "val", "--data-root", str(camvid_root)])
    assert r.exit_code == 2 and r.output.strip().splitlines()[-1] == \
        "error: unknown split 'val'; choose one of train, test"


def test_data_info_counts_mask_pixels_per_class(camvid_root):
    """`data info camvid` (a traceback before: bincount of 3-D masks): labelled pixels per
    class and the void ones, which add up to every pixel of the split; Sky is 16.85% of the
    training pixels and void 3.95%, as the data's README says."""
    r = CliRunner().invoke(main, ["data", "info", "camvid", "--data-root", str(camvid_root)])
    assert r.exit_code == 0, r.output
    train = json.loads(r.output)["train"]
    total = sum(train["pixel_counts"].values()) + train["void_pixels"]
    assert total == train["n"] * 360 * 480
    assert round(100 * train["pixel_counts"]["Sky"] / total, 2) == 16.85
    assert round(100 * train["void_pixels"] / total, 2) == 3.95
