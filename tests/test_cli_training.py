"""The training commands end to end on a few hundred real images, and their bad-input errors."""

import json

import pytest
from click.testing import CliRunner

from edge_calib.cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_data):
    """A DTN trained briefly on 600 MNIST images and a 1-epoch USPS calibrator."""
    out = tmp_path_factory.mktemp("cli")
    clf = out / "mnist_dtn.pt"
    r = invoke("train-classifier", "--dataset", "mnist", "--arch", "dtn", "--data-root", shared_data,
               "--out", clf, "--epochs", 2, "--max-samples", 600, "--batch-size", 64, "--quiet")
    assert r.exit_code == 0, r.output
    info = json.loads(r.output.strip().splitlines()[-1])
    assert info["params"] == 3_133_962 and info["source_test_acc"] > 50
    cal = out / "usps.calib.pt"
    r = invoke("train", "--classifier", clf, "--source", "mnist", "--target", "usps",
               "--data-root", shared_data, "--domain", "usps", "--out", cal, "--epochs", 1,
               "--max-samples", 256, "--batch-size", 64, "--calibrator-arch", "resnet", "--width", 4,
               "--blocks", 2, "--quiet")
    assert r.exit_code == 0, r.output
    return out, clf, cal


def test_eval_json_with_and_without_calibrator(trained, shared_data):
    out, clf, cal = trained
    r = invoke("eval", "--classifier", clf, "--dataset", "usps", "--split", "test",
               "--data-root", shared_data, "--json", "--max-samples", 300)
    plain = json.loads(r.output)
    assert plain["n"] == 300 and plain["calibrator_params"] is None
    # the same 300 images through the checkpoint by hand: preprocess, forward, argmax
    import torch

    from edge_calib.data import load_dataset
    from edge_calib.models.store import load_classifier
    c = load_classifier(clf)
    images = load_dataset("usps", "test", shared_data).subset(300)
    with torch.no_grad():
        predicted = c.module(torch.from_numpy(c.spec.preprocess(images.images))).argmax(1).numpy()
    assert plain["accuracy"] == pytest.approx(100 * (predicted == images.labels).mean(), abs=1e-3)
    r = invoke("eval", "--classifier", clf, "--calibrator", cal, "--dataset", "usps",
               "--data-root", shared_data, "--json", "--max-samples", 300)
    res = json.loads(r.output)
    for key in ("dataset", "split", "n", "accuracy", "classifier_params", "calibrator_params",
                "overhead_params_pct"):
        assert key in res
    from edge_calib.models.calibrators.resnet import ResnetCalibrator
    from edge_calib.models.classifiers import count_parameters
    assert res["calibrator_params"] == count_parameters(ResnetCalibrator(width=4, blocks=2))
    assert res["overhead_params_pct"] == pytest.approx(100 * res["calibrator_params"] / 3_133_962, abs=1e-3)
    lines = (out / "usps.calib.metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and "source_test_accuracy" in json.loads(lines[0])


def test_target_as_unlabelled_folder(trained, tmp_path, shared_data):
    import cv2

    from edge_calib.data import load_dataset

    _, clf, _ = trained
    frames = tmp_path / "frames"
    frames.mkdir()
    usps = load_dataset("usps", "train", shared_data)
    for i in range(40):  # frames of another size and format, as a camera would give
        cv2.imwrite(str(frames / f"{i:03d}.jpg"), cv2.resize(usps.images[i], (48, 48)))
    r = invoke("train", "--classifier", clf, "--source", "mnist", "--target", frames,
               "--data-root", shared_data, "--domain", "cam", "--out", tmp_path / "cam.calib.pt",
               "--epochs", 1, "--max-samples", 40, "--batch-size", 20, "--calibrator-arch", "resnet",
               "--width", 2, "--blocks", 1,
               "--quiet")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["domain"] == "cam"


def test_existing_state_needs_resume_or_force(trained, shared_data):
    out, clf, cal = trained
    r = CliRunner().invoke(main, ["train", "--classifier", str(clf), "--source", "mnist",
                                  "--target", "usps", "--data-root", str(shared_data),
                                  "--domain", "usps", "--out", str(cal), "--epochs", 1])
    assert r.exit_code == 2 and "--resume" in r.output


@pytest.mark.parametrize("args,message", [
    (["train-classifier", "--dataset", "mnistt", "--out", "{tmp}/x.pt"], "unknown dataset 'mnistt'"),
    (["train-classifier", "--dataset", "mnist", "--arch", "vgg", "--out", "{tmp}/x.pt"],
     "unknown architecture 'vgg'"),
    (["train", "--classifier", "{clf}", "--source", "mnist", "--target", "usps", "--domain", "u",
      "--out", "{tmp}/x.pt", "--eps", "0"], "--eps must be a positive finite number"),
    (["train", "--classifier", "{clf}", "--source", "mnist", "--target", "usps", "--domain", "u",
      "--out", "{tmp}/x.pt", "--w-histogram", "nan"], "--w-histogram must be a finite number"),
    (["train", "--classifier", "{clf}", "--source", "mnist", "--target", "usps", "--domain", "u",
      "--out", "{tmp}/x.pt", "--w-consistency", "-1"], "--w-consistency must be a finite number"),
    (["train", "--classifier", "{tmp}/missing.pt", "--source", "mnist", "--target", "usps",
      "--domain", "u", "--out", "{tmp}/x.pt"], "no such checkpoint"),
    (["train", "--classifier", "{clf}", "--source", "mnist", "--target", "{tmp}/empty",
      "--domain", "u", "--out", "{tmp}/x.pt"], "no images found"),
    (["eval", "--classifier", "{other}", "--calibrator", "{cal}", "--dataset", "usps"],
     "was trained against classifier"),
    (["train-classifier", "--dataset", "camvid:day", "--arch", "lraspp_small", "--input-size",
      "100000x100000", "--out", "{tmp}/x.pt"],
     "--input-size 100000x100000: an input of 100000x100000 pixels is over the limit of "
     "16,777,216 pixels ($EDGE_CALIB_MAX_INPUT_PIXELS raises it)"),
    (["train", "--classifier", "{clf}", "--source", "mnist", "--target", "usps", "--domain", "u",
      "--out", "{tmp}/x.pt", "--train-size", "5000x5000"], "--train-size 5000x5000: an input of"),
])
def test_bad_input_one_line_no_output(trained, tmp_path, shared_data, args, message):
    out, clf, cal = trained
    (tmp_path / "empty").mkdir()
    other = tmp_path / "other.pt"
    if "{other}" in args:
        from helpers import random_classifier
        random_classifier("dtn", seed=5).save(other)
    args = [a.format(tmp=tmp_path, clf=clf, cal=cal, other=other) for a in args]
    r = CliRunner().invoke(main, args + ["--data-root", str(shared_data)])
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert r.output.strip().count("\n") == 0 and r.output.startswith("error: ")
    assert not (tmp_path / "x.pt").exists()


def test_running_out_of_memory_names_the_batch_size_to_try(shared_data, tmp_path):
    """A real allocation failure: the process's address space is capped (RLIMIT_AS, as a
    container's memory limit without overcommit would) and the batch is 50,000 of the MNIST
    training digits. One line naming half the batch, exit 2, nothing written. The memory check
    before training would refuse this batch first (``test_memory_budget.py``): its budget is
    set past the cap here, so the allocation itself fails, as it would where the estimate falls
    short."""
    import os
    import resource
    import subprocess
    import sys

    cap = 6 << 30
    proc = subprocess.run(
        [sys.executable, "-m", "edge_calib.cli", "train-classifier", "--dataset", "mnist",
         "--data-root", str(shared_data), "--out", str(tmp_path / "m.pt"), "--epochs", "1",
         "--batch-size", "50000", "--quiet"], capture_output=True, text=True, timeout=600,
        env=os.environ | {"EDGE_CALIB_TRAIN_MEMORY": str(1 << 40)},
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap)))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: out of memory training at --batch-size 50000: try --batch-size 25000; no epoch "
        "had finished, nothing was written")
    assert [p.name for p in tmp_path.iterdir()] == []


def test_a_recipe_sets_what_the_user_left_at_its_default(shared_data, tmp_path):
    """`train --recipe statistics` trains with the recipe's settings (train/recipes.py) except
    the options given, and `adapt`'s defaults are the same recipe."""
    from edge_calib.commands.adapt import adapt
    from edge_calib.models.store import load_calibrator
    from edge_calib.train.recipes import RECIPES
    from helpers import random_classifier

    random_classifier("dtn").save(tmp_path / "c.pt")
    r = CliRunner().invoke(main, [str(a) for a in (
        "train", "--classifier", tmp_path / "c.pt", "--source", "mnist", "--target", "usps",
        "--domain", "usps", "--out", tmp_path / "u.calib.pt", "--data-root", shared_data,
        "--max-samples", 64, "--epochs", 1, "--batch-size", 32, "--quiet",
        "--recipe", "statistics", "--w-stats", 1)])
    assert r.exit_code == 0, r.output
    config = load_calibrator(tmp_path / "u.calib.pt").meta.config
    recipe = RECIPES["statistics"]
    assert config["w_stats"] == 1.0 != recipe["w_stats"]
    assert config["arch"] == "curve" and config["size"]["knots"] > 0
    assert {k: config[k] for k in recipe if k not in ("arch", "size", "w_stats")} == \
        {k: v for k, v in recipe.items() if k not in ("arch", "size", "w_stats")}
    defaults = {p.name: p.default for p in adapt.params}
    assert {k: defaults[k] for k in recipe if k != "objective"} == \
        {k: v for k, v in recipe.items() if k != "objective"}
