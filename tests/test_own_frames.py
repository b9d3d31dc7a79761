"""Scoring on a user's own labelled frames (images/ + labels/, with or without a label map) and
a camera's unlabelled frames in nested folders, built here from the real CamVid frames."""

import json
import shutil

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from edge_calib.cli import main
from edge_calib.data.camvid import CLASSES

COARSE = {"Sky": 0, "Building": 1, "Tree": 1, "Road": 2, "Pavement": 2, "Car": 3,
          "Pedestrian": 4, "Bicyclist": 4}  # Pole, SignSymbol, Fence: id 5, mapped from nothing
LEFT_OUT = 5


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def result(r) -> dict:
    assert r.exit_code == 0, r.output
    return json.loads(r.output.strip().splitlines()[-1])


def one_line_error(r, message):
    assert r.exit_code == 2, r.output
    assert message in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def camvid_dusk_test(camvid_root):
    """(frame path, mask) of every dusk test frame, from the split list."""
    folder = camvid_root / "camvid"
    pairs = [line.split() for line in (folder / "test.txt").read_text().splitlines()
             if line.startswith("test/0001TP")]
    return [(folder / f, cv2.imread(str(folder / m), cv2.IMREAD_UNCHANGED)) for f, m in pairs]


def write_frames(root, pairs, to_label):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for frame, mask in pairs:
        shutil.copy(frame, root / "images" / frame.name)
        cv2.imwrite(str(root / "labels" / f"{frame.stem}.png"), to_label(mask))
    return root


@pytest.fixture(scope="module")
def own_folder(camvid_dusk_test, tmp_path_factory):
    """The dusk test frames as a user would lay them out: CamVid's void (11) becomes 255."""
    return write_frames(tmp_path_factory.mktemp("own") / "frames", camvid_dusk_test,
                        lambda m: np.where(m == 11, 255, m).astype(np.uint8))


@pytest.fixture(scope="module")
def coarse_folder(camvid_dusk_test, tmp_path_factory):
    """The same frames labelled with 5 coarse groups (ids 0-4) and id 5 for pole, sign and
    fence, which no model class maps to."""
    lut = np.full(256, 255, np.uint8)
    for index, name in enumerate(CLASSES):
        lut[index] = COARSE.get(name, LEFT_OUT)
    return write_frames(tmp_path_factory.mktemp("coarse") / "frames", camvid_dusk_test,
                        lambda m: lut[m])


@pytest.mark.slow
def test_own_frames_score_as_the_built_in_camvid_evaluation(seg_model, own_folder, camvid_root,
                                                            tmp_path):
    seg, bundle = seg_model
    built_in = result(invoke("eval", "--classifier", seg, "--dataset", "camvid:dusk", "--split",
                             "test", "--json", "--data-root", camvid_root))
    own = result(invoke("eval", "--classifier", seg, "--dataset", own_folder, "--json"))
    assert own["n"] == built_in["n"] == 62
    for key in ("miou", "per_class_iou", "pixel_accuracy", "fwiou", "labelled_pixels"):
        assert own[key] == built_in[key], key
    deployed = result(invoke("eval", "--deploy", bundle, "--domain", "day", "--dataset",
                             own_folder, "--json"))
    deployed_built_in = result(invoke("eval", "--deploy", bundle, "--domain", "day", "--dataset",
                                      "camvid:dusk", "--json", "--data-root", camvid_root))
    assert deployed["miou"] == deployed_built_in["miou"]


def test_a_label_map_merges_classes_and_leaves_unmapped_ids_out(seg_model, coarse_folder,
                                                                camvid_root, tmp_path):
    """The mapped scores recomputed by hand from the model's own predictions."""
    from edge_calib.data import load_dataset
    from edge_calib.models.store import load_classifier

    seg, bundle = seg_model
    (tmp_path / "map.json").write_text(json.dumps(COARSE))
    got = result(invoke("eval", "--classifier", seg, "--dataset", coarse_folder, "--label-map",
                        tmp_path / "map.json", "--json"))
    clf = load_classifier(seg)
    data = load_dataset(str(coarse_folder), "test", image_size=(clf.spec.height, clf.spec.width))
    with torch.no_grad():
        logits = clf.module(torch.from_numpy(clf.spec.preprocess(data.images)))
        pred = F.interpolate(logits, size=data.labels.shape[1:], mode="bilinear",
                             align_corners=False).argmax(1).numpy()
    to_id = np.array([COARSE.get(name, -1) for name in CLASSES])[pred]  # -1: unmapped class
    truth = data.labels.astype(np.int64)
    scored = (truth != 255) & (truth != LEFT_OUT)
    ious = []
    for label in range(5):
        tp = ((to_id == label) & (truth == label) & scored).sum()
        union = (((to_id == label) | (truth == label)) & scored).sum()
        ious.append(tp / union if union else np.nan)
    assert got["miou"] == pytest.approx(100 * np.nanmean(ious), abs=1e-3)
    assert got["pixel_accuracy"] == pytest.approx(100 * ((to_id == truth) & scored).sum()
                                                  / scored.sum(), abs=1e-3)
    assert got["label_map"]["left_out_ids"] == {str(LEFT_OUT): int((truth == LEFT_OUT).sum())}
    assert got["label_map"]["scored_ids"]["1"] == "Building+Tree"
    deployed = result(invoke("eval", "--deploy", bundle, "--domain", "day", "--dataset",
                             coarse_folder, "--label-map", tmp_path / "map.json", "--json"))
    assert deployed["label_map"] == got["label_map"]
    assert deployed["miou"] == pytest.approx(got["miou"], abs=0.5)


def test_bad_frames_and_maps_are_one_line(seg_model, own_folder, tmp_path):
    seg, _ = seg_model
    broken = tmp_path / "broken"
    shutil.copytree(own_folder, broken)
    next((broken / "labels").iterdir()).unlink()
    one_line_error(invoke("eval", "--classifier", seg, "--dataset", broken),
                   "file stem(s) have no match in labels/")
    (tmp_path / "bad.json").write_text(json.dumps({"Sky": 0, "Lamp": 1}))
    one_line_error(invoke("eval", "--classifier", seg, "--dataset", own_folder, "--label-map",
                          tmp_path / "bad.json"), "names unknown class 'Lamp'")
    (tmp_path / "notjson.json").write_text("{Sky: 0")
    one_line_error(invoke("eval", "--classifier", seg, "--dataset", own_folder, "--label-map",
                          tmp_path / "notjson.json"), "not JSON")
    wide = tmp_path / "wide"
    shutil.copytree(own_folder, wide)
    label = next((wide / "labels").iterdir())
    mask = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
    mask[0, 0] = 17
    cv2.imwrite(str(label), mask)
    one_line_error(invoke("eval", "--classifier", seg, "--dataset", wide),
                   "label value 17 is out of range: the model has 11 classes (0-10), 255 marks "
                   "unlabelled; give --label-map")


def test_a_cameras_nested_frames_are_unlabelled_frames(seg_model, camvid_dusk_test, tmp_path):
    """Frames in sequence folders named by number: `train --target` and `run --input` read
    them all; `eval --dataset` says in one line that it is no labelled dataset."""
    seg, bundle = seg_model
    camera = tmp_path / "camera"
    for i, (frame, _) in enumerate(camvid_dusk_test[:12]):
        day = camera / f"{i // 4:04d}"
        day.mkdir(parents=True, exist_ok=True)
        shutil.copy(frame, day / frame.name)
    r = invoke("train", "--classifier", seg, "--source", camera, "--target", camera, "--domain",
               "cam", "--out", tmp_path / "cam.calib.pt", "--epochs", 1, "--batch-size", 4,
               "--calibrator-arch", "curve", "--objective", "stats", "--quiet")
    assert result(r)["epochs"] == 1
    run = result(invoke("run", "--input", camera, "--deploy", bundle, "--domain", "day",
                        "--headless", "--json"))
    assert run["frames"] == 12
    one_line_error(invoke("eval", "--classifier", seg, "--dataset", camera),
                   "has image labels, but the model is a segmenter")


@pytest.fixture(scope="module")
def seg_model(camvid_root, tmp_path_factory):
    """A CamVid segmenter trained for 2 epochs on 40 day frames (its predictions vary over the
    frame, so mapping classes changes the scores), and its bundle."""
    work = tmp_path_factory.mktemp("segmodel")
    r = invoke("train-classifier", "--dataset", "camvid:day", "--arch", "lraspp_small",
               "--epochs", 2, "--batch-size", 8, "--max-samples", 40, "--lr", "2e-3", "--quiet",
               "--out", work / "seg.pt", "--data-root", camvid_root)
    assert r.exit_code == 0, r.output
    r = invoke("export", "--classifier", work / "seg.pt", "--calibrator", "day=identity",
               "--out", work / "bundle", "--quiet", "--data-root", camvid_root)
    assert r.exit_code == 0, r.output
    return work / "seg.pt", work / "bundle"


def test_masks_in_front_of_a_classifier_are_one_line_before_any_training(trained_dtn,
                                                                         camvid_root, tmp_path):
    """A segmentation dataset as the source of a classifier's calibrator (its monitor frames
    are masks): one line at once, not a traceback after an epoch."""
    r = invoke("train", "--classifier", trained_dtn, "--source", "camvid:day", "--target",
               "camvid:dusk", "--domain", "dusk", "--out", tmp_path / "x.calib.pt", "--epochs", 1,
               "--data-root", camvid_root, "--quiet")
    one_line_error(r, "camvid:day has label masks, but the model is a classifier")
    assert not list(tmp_path.iterdir())


def test_ignore_index_reads_labels_whose_void_is_not_255(seg_model, camvid_dusk_test,
                                                         camvid_root, tmp_path):
    """CamVid's own label files mark void with 11: refused as out of range, scored exactly as
    the built-in CamVid evaluation with --ignore-index 11."""
    seg, _ = seg_model
    raw = write_frames(tmp_path / "raw", camvid_dusk_test, lambda m: m)
    one_line_error(invoke("eval", "--classifier", seg, "--dataset", raw, "--json"),
                   "label value 11 is out of range")
    own = result(invoke("eval", "--classifier", seg, "--dataset", raw, "--ignore-index", 11,
                        "--json"))
    built_in = result(invoke("eval", "--classifier", seg, "--dataset", "camvid:dusk", "--split",
                             "test", "--json", "--data-root", camvid_root))
    for key in ("miou", "per_class_iou", "labelled_pixels"):
        assert own[key] == built_in[key], key


def test_eval_scores_the_runtime_fallback_for_unknown_frames(seg_model, camvid_root):
    """eval --deploy --unknown histogram is the runtime's fallback: its histogram matching to
    the bundle's source pixels, then the classifier graph (recomputed here by hand)."""
    import onnxruntime as ort

    from edge_calib.core.scoring import Scorer
    from edge_calib.data import load_dataset
    from edge_calib.deploy.bundle import open_bundle
    from edge_calib.runtime.controller import unknown_fallback
    from edge_calib.bench.accuracy import upsample_logits

    _, bundle = seg_model
    args = ("--dataset", "camvid:dusk", "--max-samples", 6, "--json", "--data-root", camvid_root)
    alone = result(invoke("eval", "--deploy", bundle, "--unknown", "model", *args))
    day = result(invoke("eval", "--deploy", bundle, "--domain", "day", *args))
    assert alone["miou"] == day["miou"] and alone["unknown"] == "model"  # day is the identity
    matched = result(invoke("eval", "--deploy", bundle, "--unknown", "histogram", *args))
    b = open_bundle(bundle)
    spec = b.spec
    data = load_dataset("camvid:dusk", "test", camvid_root,
                        image_size=(spec.height, spec.width)).subset(6)
    frames = unknown_fallback(b, "histogram")(spec.resize_uint8(data.images))
    session = ort.InferenceSession(str(b.classifier_file("onnxruntime")))
    logits = session.run(None, {session.get_inputs()[0].name: spec.preprocess(frames)})[0]
    scorer = Scorer("segmentation", b.labels, data.void)
    scorer.add(upsample_logits(logits, data.labels.shape[1:]).argmax(1), data.labels)
    by_hand = scorer.scores()
    for key in ("miou", "pixel_accuracy"):
        assert matched[key] == round(by_hand[key], 3), key
    assert not np.array_equal(frames, spec.resize_uint8(data.images))  # it did match them
