"""CamVid (real frames, domains by sequence) and the photometric shifts of real digits."""

import shutil

import cv2
import numpy as np
import pytest

from edge_calib.data import load_dataset
from edge_calib.data.camvid import VOID, domain_of
from edge_calib.data.shifts import SHIFTS
from edge_calib.core.errors import EdgeCalibError
from edge_calib.core.spec import InputSpec
from edge_calib.train.tensors import DomainData


def test_camvid_day_dusk_protocol_sizes(camvid_root):
    sizes = {(name, split): len(load_dataset(name, split, camvid_root))
             for name, split in [("camvid:day", "train"), ("camvid:day", "val"),
                                 ("camvid:dusk", "train"), ("camvid:dusk", "test"),
                                 ("camvid:day", "test"), ("camvid", "train")]}
    assert sizes == {("camvid:day", "train"): 305, ("camvid:day", "val"): 101,
                     ("camvid:dusk", "train"): 62, ("camvid:dusk", "test"): 62,
                     ("camvid:day", "test"): 171, ("camvid", "train"): 367}


def test_camvid_frames_and_masks(camvid_root):
    dusk = load_dataset("camvid:dusk", "test", camvid_root)
    assert dusk.images.shape == (62, 360, 480, 3) and dusk.images.dtype == np.uint8
    assert dusk.labels.shape == (62, 360, 480) and dusk.labels.dtype == np.uint8
    assert set(np.unique(dusk.labels)) <= set(range(VOID + 1))
    assert (dusk.labels == VOID).any()  # void pixels exist and are kept as 11
    day = load_dataset("camvid:day", "test", camvid_root)
    assert dusk.images.mean() < 0.7 * day.images.mean()  # dusk really is darker
    label = cv2.imread(str(camvid_root / "camvid/testannot/0001TP_008550.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(dusk.labels[0], label)  # the canonical label bytes, unchanged
    assert domain_of("0001TP_008550.jpg") == "dusk" and domain_of("Seq05VD_f00000.png") == "day"


def test_masks_keep_their_resolution_at_a_smaller_input(camvid_root):
    ds = load_dataset("camvid:dusk", "test", camvid_root).subset(3)
    data = DomainData(ds, InputSpec(180, 240, 3, (0.5,) * 3, (0.5,) * 3))
    assert data.images.shape == (3, 180, 240, 3)  # the network's input size
    assert data.labels.shape == (3, 360, 480)  # scored at the labels' full resolution
    assert data.classes[0] == "Sky" and len(data.classes) == 11


@pytest.fixture
def camvid_copy(camvid_root, tmp_path):
    """A small CamVid copy (PNG frames, as users download them) to break in various ways."""
    root = tmp_path / "data"
    for sub in ("test", "testannot"):
        (root / "camvid" / sub).mkdir(parents=True)
    for stem in ("0001TP_008550", "0001TP_008580", "Seq05VD_f00000"):
        frame = cv2.imread(str(camvid_root / f"camvid/test/{stem}.jpg"))
        cv2.imwrite(str(root / f"camvid/test/{stem}.png"), frame)
        shutil.copy(camvid_root / f"camvid/testannot/{stem}.png", root / "camvid/testannot")
    return root


def test_camvid_reads_png_frames(camvid_copy):
    ds = load_dataset("camvid:dusk", "test", camvid_copy)
    assert len(ds) == 2 and ds.images.shape[1:] == (360, 480, 3)


@pytest.mark.parametrize("breakage,message", [
    ("no_label", "has no label"),
    ("bad_ids", r"label ids outside 0-11 \(found 12\)"),
    ("other_size", "frame is 240x180, CamVid frames are 480x360"),
    ("no_folder", "camvid test frames not found"),
])
def test_camvid_bad_inputs(camvid_copy, breakage, message):
    base = camvid_copy / "camvid"
    if breakage == "no_label":
        (base / "testannot/0001TP_008580.png").unlink()
    elif breakage == "bad_ids":
        mask = cv2.imread(str(base / "testannot/0001TP_008550.png"), cv2.IMREAD_UNCHANGED)
        mask[0, 0] = 12
        cv2.imwrite(str(base / "testannot/0001TP_008550.png"), mask)
    elif breakage == "other_size":
        frame = cv2.imread(str(base / "test/0001TP_008550.png"))
        cv2.imwrite(str(base / "test/0001TP_008550.png"), cv2.resize(frame, (240, 180)))
    else:
        shutil.rmtree(base / "test")
    with pytest.raises(EdgeCalibError, match=message):
        load_dataset("camvid:dusk", "test", camvid_copy)


@pytest.mark.parametrize("shift", SHIFTS)
def test_shifts_are_deterministic_real_digit_images(shift, camvid_root):
    clean = load_dataset("mnist", "test", camvid_root)
    a = load_dataset(f"mnist:{shift}", "test", camvid_root)
    b = load_dataset(f"mnist:{shift}", "test", camvid_root)
    assert a.images.shape == (10000, 28, 28, 3) and a.images.dtype == np.uint8
    assert np.array_equal(a.images, b.images)  # same bytes on every build
    assert np.array_equal(a.labels, clean.labels)  # the test split keeps its order
    assert not np.array_equal(a.images[..., 0], clean.images[..., 0])
    # still the same digits: each shifted image correlates with its own clean image far more
    # than with another one (|r|: the texture blend inverts strokes on bright backgrounds)
    grey = a.images.astype(np.float32).mean(-1).reshape(len(a), -1)[:500]
    src = clean.images.astype(np.float32).reshape(len(a), -1)[:500]
    r = lambda pairs: np.median([abs(np.corrcoef(g, s)[0, 1]) for g, s in pairs])  # noqa: E731
    own, other = r(zip(grey, src)), r(zip(grey, np.roll(src, 1, axis=0)))
    assert own > other + 0.2, (own, other)


def test_shifted_training_split_is_reordered(shared_data):
    clean = load_dataset("usps", "train", shared_data)
    shifted = load_dataset("usps:lowlight", "train", shared_data)
    assert np.array_equal(np.bincount(shifted.labels), np.bincount(clean.labels))
    assert (shifted.labels != clean.labels).mean() > 0.5  # another order, not the same images


def test_unknown_shift_and_dataset(shared_data):
    with pytest.raises(EdgeCalibError, match="unknown shift 'fog' of mnist"):
        load_dataset("mnist:fog", "test", shared_data)
    with pytest.raises(EdgeCalibError, match="unknown dataset 'cifar'"):
        load_dataset("cifar", "test", shared_data)
    with pytest.raises(EdgeCalibError, match="camvid has no domain 'night'"):
        load_dataset("camvid:night", "test", shared_data)
