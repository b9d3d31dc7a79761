"""Dataset parsers against small files written in each canonical format, and the real files."""

import bz2
import gzip
import struct

import cv2
import numpy as np
import pytest

from edge_calib.data import load_dataset
from edge_calib.data.formats import (
    read_idx,
    read_image_folder,
    read_svhn_mat,
    read_usps_esl,
    read_usps_libsvm,
)
from edge_calib.core.errors import EdgeCalibError


def write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_roundtrip_and_truncation(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "x.gz", images)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz"), images)
    raw = gzip.decompress((tmp_path / "x.gz").read_bytes())[:-10]
    (tmp_path / "t.gz").write_bytes(gzip.compress(raw))
    with pytest.raises(EdgeCalibError, match="payload"):
        read_idx(tmp_path / "t.gz")
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x01\x02\x03\x04"))
    with pytest.raises(EdgeCalibError, match="magic"):
        read_idx(tmp_path / "bad.gz")


def test_usps_esl_format(tmp_path):
    values = np.linspace(-1, 1, 256)
    lines = [f"{lab:.4f} " + " ".join(f"{v:.4f}" for v in values) for lab in (3, 0, 9)]
    with gzip.open(tmp_path / "zip.train.gz", "wt") as f:
        f.write("\n".join(lines) + "\n")
    images, labels = read_usps_esl(tmp_path / "zip.train.gz")
    assert images.shape == (3, 16, 16, 1) and images.dtype == np.uint8
    assert labels.tolist() == [3, 0, 9]
    assert images[0, 0, 0, 0] == 0 and images[0, 15, 15, 0] == 255  # (v + 1) / 2 * 255, row-major


def test_usps_libsvm_format(tmp_path):
    rng = np.random.default_rng(1)
    values = rng.uniform(-1, 1, (2, 256))
    lines = [f"{lab} " + " ".join(f"{i + 1}:{v:.6f}" for i, v in enumerate(row))
             for lab, row in zip((1, 10), values)]
    (tmp_path / "usps.bz2").write_bytes(bz2.compress(("\n".join(lines) + "\n").encode()))
    images, labels = read_usps_libsvm(tmp_path / "usps.bz2")
    assert labels.tolist() == [0, 9]  # LIBSVM labels 1-10 are digits 0-9
    expected = ((values + 1) / 2 * 255).astype(np.uint8).reshape(2, 16, 16, 1)
    np.testing.assert_array_equal(images, expected)


def test_svhn_mat_format(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (32, 32, 3, 4), dtype=np.uint8)
    y = np.array([[10], [1], [5], [10]], dtype=np.uint8)
    savemat(tmp_path / "train_32x32.mat", {"X": x, "y": y})
    images, labels = read_svhn_mat(tmp_path / "train_32x32.mat")
    assert images.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(images[2], x[..., 2])
    assert labels.tolist() == [0, 1, 5, 0]  # label 10 means digit 0
    (tmp_path / "broken.mat").write_bytes(b"MATLAB 5.0 garbage")
    with pytest.raises(EdgeCalibError, match="broken.mat"):
        read_svhn_mat(tmp_path / "broken.mat")


def test_image_folders(tmp_path):
    labelled = tmp_path / "labelled"
    for label in (0, 1, 2):
        (labelled / str(label)).mkdir(parents=True)
        for i in range(2):
            cv2.imwrite(str(labelled / str(label) / f"{i}.png"),
                        np.full((20 + i, 24, 3), 40 * label, np.uint8))
    images, labels = read_image_folder(labelled, size=(16, 16))
    assert images.shape == (6, 16, 16, 3) and labels.tolist() == [0, 0, 1, 1, 2, 2]
    flat = tmp_path / "frames"
    flat.mkdir()
    for i in range(3):
        cv2.imwrite(str(flat / f"f{i}.jpg"), np.full((64, 48), 100, np.uint8))
    images, labels = read_image_folder(flat, size=(32, 32))
    assert images.shape == (3, 32, 32, 1) and labels is None
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgeCalibError, match="no images"):
        read_image_folder(tmp_path / "empty")


def test_catalog_errors(tmp_path):
    with pytest.raises(EdgeCalibError, match="unknown dataset 'mnistt'"):
        load_dataset("mnistt", "train", tmp_path)
    with pytest.raises(EdgeCalibError, match="edge-calib data fetch mnist"):
        load_dataset("mnist", "train", tmp_path)  # downloads are off in tests
    with pytest.raises(EdgeCalibError, match="unknown split"):
        load_dataset("mnist", "val", tmp_path)


def test_corrupt_local_file_is_named(tmp_path, shared_data):
    folder = tmp_path / "usps"
    folder.mkdir()
    data = (shared_data / "usps" / "zip.test.gz").read_bytes()
    (folder / "zip.test.gz").write_bytes(data[:-100])
    with pytest.raises(EdgeCalibError, match="zip.test.gz is corrupt"):
        load_dataset("usps", "test", tmp_path)


MNIST_COUNTS = {"train": [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
                "test": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]}
USPS_COUNTS = {"train": [1194, 1005, 731, 658, 652, 556, 664, 645, 542, 644],
               "test": [359, 264, 198, 166, 200, 160, 170, 147, 166, 177]}


@pytest.mark.parametrize("name,counts,shape", [("mnist", MNIST_COUNTS, (28, 28, 1)),
                                               ("usps", USPS_COUNTS, (16, 16, 1))])
@pytest.mark.parametrize("split", ["train", "test"])
def test_real_files(shared_data, name, counts, shape, split):
    ds = load_dataset(name, split, shared_data)
    assert ds.images.shape[1:] == shape and ds.images.dtype == np.uint8
    assert np.bincount(ds.labels).tolist() == counts[split]
