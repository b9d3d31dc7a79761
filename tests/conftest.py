import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the real datasets: $EDGE_CALIB_DATA when set, else the shared folder beside the project
SHARED_DATA = Path(os.environ.get("EDGE_CALIB_DATA") or ROOT.parent / "shared" / "data")

# Tests never touch the internet: automatic dataset downloads are off.
os.environ["EDGE_CALIB_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The canonical MNIST/USPS files beside the project (skips when they are absent)."""
    if not (SHARED_DATA / "mnist").is_dir() or not (SHARED_DATA / "usps").is_dir():
        pytest.skip(f"real digit data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def digits(shared_data):
    """MNIST/USPS splits at the DTN's input spec (real images)."""
    from edge_calib.data import load_dataset
    from edge_calib.core.spec import DIGITS_RGB32
    from edge_calib.train.tensors import DomainData

    load = lambda name, split, n=None: DomainData(  # noqa: E731
        load_dataset(name, split, shared_data).subset(n), DIGITS_RGB32)
    return {"mnist_train": load("mnist", "train", 4000), "mnist_test": load("mnist", "test"),
            "usps_train": load("usps", "train", 1000), "usps_test": load("usps", "test")}


@pytest.fixture(scope="session")
def trained_dtn(digits, tmp_path_factory):
    """A DTN trained for 2 epochs on 4000 real MNIST images, saved as a checkpoint."""
    import torch

    from edge_calib.core.spec import DIGITS_RGB32
    from edge_calib.train.classifier import train_classifier

    clf = train_classifier("dtn", DIGITS_RGB32, digits["mnist_train"], None, epochs=2,
                           batch_size=64, lr=1e-3, seed=0, device=torch.device("cpu"),
                           val_fraction=0.0, progress=False)
    path = tmp_path_factory.mktemp("models") / "mnist_dtn.pt"
    clf.save(path)
    return path


@pytest.fixture(scope="session")
def int8_dtn(trained_dtn, digits, tmp_path_factory):
    """``trained_dtn`` pruned 2:4 and quantised to INT8 (scales from its MNIST images)."""
    from edge_calib.compress.pipeline import compress_classifier
    from edge_calib.models.store import load_classifier

    q = compress_classifier(load_classifier(trained_dtn), "2:4", True, digits["mnist_train"],
                            test=digits["mnist_test"], progress=False)
    path = tmp_path_factory.mktemp("int8") / "mnist_dtn_int8.pt"
    q.save(path)
    return path


@pytest.fixture(scope="session")
def trained_calibrator(trained_dtn, digits, tmp_path_factory):
    """A small (width 4, 2 blocks) USPS calibrator trained for 1 epoch against ``trained_dtn``."""
    import torch

    from edge_calib.models.records import CalibratorRecord
    from edge_calib.models.store import load_classifier, save_calibrator
    from edge_calib.train.calibrate import CalibratorConfig, CalibratorTrainer
    from edge_calib.train.loop import state_paths

    clf = load_classifier(trained_dtn)
    out = tmp_path_factory.mktemp("calib") / "usps.calib.pt"
    cfg = CalibratorConfig(epochs=1, batch_size=64, arch="resnet", size={"width": 4, "blocks": 2},
                           lr=1e-3)
    trainer = CalibratorTrainer(clf, digits["mnist_train"], digits["usps_train"], cfg,
                                torch.device("cpu"), *state_paths(out))
    module, summary = trainer.run(progress=False)
    save_calibrator(out, module, CalibratorRecord(
        domain="usps", classifier_fingerprint=clf.fingerprint, input_spec=clf.spec,
        source="mnist", target="usps", training=summary))
    return out


@pytest.fixture(scope="session")
def bundle_dir(trained_dtn, trained_calibrator, shared_data, tmp_path_factory):
    """A deploy bundle: domains usps (calibrated) and mnist (identity), with the auto-domain
    classifier, built through the CLI."""
    from click.testing import CliRunner

    from edge_calib.cli import main

    out = tmp_path_factory.mktemp("bundle") / "digits"
    result = CliRunner().invoke(main, ["export", "--classifier", str(trained_dtn),
                                       "--calibrator", f"usps={trained_calibrator}",
                                       "--calibrator", "mnist=identity", "--out", str(out),
                                       "--data-root", str(shared_data)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def domain_video(shared_data, tmp_path_factory):
    """A real video: 60 MNIST test frames, then 60 USPS test frames, with ground truth."""
    from edge_calib.data import load_dataset
    from edge_calib.runtime.testvideo import write_domain_video

    m = load_dataset("mnist", "test", shared_data)
    u = load_dataset("usps", "test", shared_data)
    path = tmp_path_factory.mktemp("video") / "digits.avi"
    truth = write_domain_video(path, [("mnist", m.images[:60], m.labels[:60]),
                                      ("usps", u.images[:60], u.labels[:60])])
    return path, truth


@pytest.fixture(scope="session")
def camvid_root(shared_data) -> Path:
    """The data root holding the real CamVid frames (skips when absent)."""
    if not (shared_data / "camvid" / "trainannot").is_dir():
        pytest.skip(f"CamVid not found at {shared_data / 'camvid'}")
    return shared_data
