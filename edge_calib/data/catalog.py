"""The dataset catalogue: names, canonical files and mirrors, and one ``load_dataset`` entry.

Layout under a data root (the same as ``../shared/data``)::

    ROOT/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
    ROOT/usps/zip.{train,test}.gz          (ESL text format)  or  usps.bz2, usps.t.bz2 (LIBSVM)
    ROOT/svhn/{train,test}_32x32.mat

    ROOT/camvid/{train,val,test}[annot]/...   (the SegNet tutorial's CamVid, see camvid.py)

``NAME:FILTER`` selects or derives a domain: ``camvid:day`` / ``camvid:dusk`` (by sequence),
``mnist:lowlight`` etc. (a photometric shift of a digit dataset, see shifts.py). A dataset
argument that is an existing folder is read as an image folder instead.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import EdgeCalibError
from . import formats
from .download import RemoteFile, downloads_allowed, fetch_file

SPLITS = ("train", "test")

_MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                  "https://storage.googleapis.com/cvdf-datasets/mnist/",
                  "http://yann.lecun.com/exdb/mnist/")
_LIBSVM = "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass/"
_ESL = ("https://hastie.su.domains/ElemStatLearn/datasets/",
        "https://web.stanford.edu/~hastie/ElemStatLearn/datasets/")
_SVHN = ("http://ufldl.stanford.edu/housenumbers/",)


def _remote(name, bases, algorithm, digest):
    return RemoteFile(name, tuple(b + name for b in bases), algorithm, digest)


@dataclass(frozen=True)
class Variant:
    """One published form of a dataset: its files per split and the parser for them."""

    name: str
    files: dict  # split -> tuple of RemoteFile
    reader: callable  # (list of paths) -> (images, labels)


def _read_mnist(paths):
    images, labels = formats.read_idx(paths[0]), formats.read_idx(paths[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise EdgeCalibError(f"{paths[0]}: MNIST images {images.shape} and labels "
                             f"{labels.shape} do not match")
    return images[..., None], labels.astype(np.int64)


CATALOG: dict[str, tuple[Variant, ...]] = {
    "mnist": (Variant("idx", {
        "train": (_remote("train-images-idx3-ubyte.gz", _MNIST_MIRRORS, "md5",
                          "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
                  _remote("train-labels-idx1-ubyte.gz", _MNIST_MIRRORS, "md5",
                          "d53e105ee54ea40749a09fcbcd1e9432")),
        "test": (_remote("t10k-images-idx3-ubyte.gz", _MNIST_MIRRORS, "md5",
                         "9fb629c4189551a2d022fa330f9573f3"),
                 _remote("t10k-labels-idx1-ubyte.gz", _MNIST_MIRRORS, "md5",
                         "ec29112dd5afa0611ce80d1b7f02629c"))}, _read_mnist),),
    "usps": (
        Variant("esl", {
            "train": (_remote("zip.train.gz", _ESL, "sha256",
                              "66ebf231ab51f2cf6ac1a892d0f98ccffee1079d7a5db638c1f11f366046ca16"),),
            "test": (_remote("zip.test.gz", _ESL, "sha256",
                             "8dacc3c6e136af6c3488de9e5113a7daf140c8c2f1f0b61c54ee02f03f1a962f"),)},
            lambda paths: formats.read_usps_esl(paths[0])),
        Variant("libsvm", {
            "train": (_remote("usps.bz2", (_LIBSVM,), "md5", "ec16c51db3855ca6c91edd34d0e9b197"),),
            "test": (_remote("usps.t.bz2", (_LIBSVM,), "md5", "8ea070ee2aca1ac39742fdd1ef5ed118"),)},
            lambda paths: formats.read_usps_libsvm(paths[0])),
    ),
    "svhn": (Variant("mat", {
        "train": (_remote("train_32x32.mat", _SVHN, "md5", "e26dedcc434d2e4c54c9b2d4a06d8373"),),
        "test": (_remote("test_32x32.mat", _SVHN, "md5", "eb5a983be6a315427106f1b164d9cef3"),)},
        lambda paths: formats.read_svhn_mat(paths[0])),),
}


@dataclass
class ImageSet:
    """uint8 images (N,H,W,C), RGB or grey; labels (N,) int64, or masks (N,H,W) uint8 whose
    value ``void`` (default ``len(classes)``) marks unlabelled pixels, or None (unlabelled);
    class names where known."""

    images: np.ndarray
    labels: np.ndarray | None
    name: str
    split: str
    classes: tuple[str, ...] | None = None
    void: int | None = None

    def __len__(self):
        return len(self.images)

    def subset(self, n: int | None, seed: int = 0) -> "ImageSet":
        """A reproducible random subset of ``n`` samples (all when n is None or >= len)."""
        if n is None or n >= len(self):
            return self
        if n <= 0:
            raise EdgeCalibError(f"--max-samples must be positive, got {n}")
        return self._take(self._subset_indices(n, seed))

    def held_out(self, n: int, seed: int = 0) -> "ImageSet":
        """The samples that ``subset(n, seed)`` leaves out, in order (none when it takes all)."""
        if n >= len(self):
            return self._take(np.zeros(0, dtype=np.int64))
        return self._take(np.setdiff1d(np.arange(len(self)), self._subset_indices(n, seed)))

    def _subset_indices(self, n: int, seed: int) -> np.ndarray:
        return np.sort(np.random.default_rng(seed).permutation(len(self))[:n])

    def _take(self, idx: np.ndarray) -> "ImageSet":
        labels = None if self.labels is None else self.labels[idx]
        return ImageSet(self.images[idx], labels, self.name, self.split, self.classes, self.void)


@functools.lru_cache(maxsize=2)
def _shifted(base: str, shift: str, split: str, root: str, download: bool):
    """A derived domain's images and labels (deterministic), built once per process for the
    last two asked for: a shift of MNIST's 60,000 training digits takes seconds, and a training
    and its evaluations ask for it several times. Callers get copies."""
    from .shifts import apply_shift

    clean = load_dataset(base, split, root, download)
    return apply_shift(clean.images, clean.labels, base, shift, split, Path(root))


def default_data_root() -> Path:
    """``$EDGE_CALIB_DATA``, else the user cache folder (``$XDG_CACHE_HOME/edge-calib/data``)."""
    env = os.environ.get("EDGE_CALIB_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "edge-calib" / "data"


def _check_split(split: str, splits=SPLITS):
    if split not in splits:
        raise EdgeCalibError(f"unknown split {split!r}; choose one of {', '.join(splits)}")


def _variants(name: str) -> tuple[Variant, ...]:
    try:
        return CATALOG[name]
    except KeyError:
        raise EdgeCalibError(f"unknown dataset {name!r}: use one of {', '.join(CATALOG)}, "
                             "camvid, NAME:SHIFT or a path to an image folder") from None


def split_name(name: str) -> tuple[str, str | None]:
    """``mnist:lowlight`` -> (mnist, lowlight); ``camvid:dusk`` -> (camvid, dusk)."""
    base, sep, modifier = name.partition(":")
    if sep and (base in CATALOG or base == "camvid"):
        return base, modifier
    return name, None


def fetch_dataset(name: str, root: str | Path, variant: str | None = None,
                  mirror: str | None = None, progress: bool = True) -> list[Path]:
    """Download (or verify) every file of a dataset variant; returns the local paths."""
    if name == "camvid":
        from .camvid import fetch_camvid

        return fetch_camvid(root, mirror, progress)
    variants = _variants(name)
    chosen = variants[0] if variant is None else next(
        (v for v in variants if v.name == variant), None)
    if chosen is None:
        raise EdgeCalibError(f"{name} has no variant {variant!r}; choose one of "
                             f"{', '.join(v.name for v in variants)}")
    folder = Path(root) / name
    return [fetch_file(f, folder / f.name, mirror=mirror, progress=progress)
            for split in SPLITS for f in chosen.files[split]]


def _local_variant(name: str, folder: Path, split: str) -> Variant | None:
    for variant in _variants(name):
        if all((folder / f.name).exists() for f in variant.files[split]):
            return variant
    return None


def has_val_split(name: str) -> bool:
    """Only CamVid has a separate validation split (the others hold part of train out)."""
    return split_name(name)[0] == "camvid"


def has_test_split(name: str) -> bool:
    """Catalogued datasets have one; a folder has one when it holds a ``test/`` subfolder."""
    base, _ = split_name(name)
    return base in CATALOG or base == "camvid" or (Path(name) / "test").is_dir()


def load_dataset(name_or_path: str | Path, split: str = "train", root: str | Path | None = None,
                 download: bool = True, image_size: tuple[int, int] | None = None,
                 unlabelled: bool = False) -> ImageSet:
    """Load a catalogued dataset split from ``root`` (downloading it when allowed) or a folder.

    A folder with ``train/`` and ``test/`` subfolders gives the split asked for; any other
    folder is read whole: labelled segmentation frames (``images/`` + ``labels/``), an
    ImageFolder (class-index subfolders), or unlabelled images. ``unlabelled``: a folder is
    read as a camera's frames, every image in it and its subfolders (a segmentation folder's
    ``images/``), without labels.
    """
    text = str(name_or_path)
    base, modifier = split_name(text)
    if base == "camvid":
        from .camvid import CLASSES, load_camvid
        from .camvid import SPLITS as CAMVID_SPLITS

        _check_split(split, CAMVID_SPLITS)
        frames, masks = load_camvid(root if root is not None else default_data_root(), split,
                                    modifier)
        return ImageSet(frames, masks, text, split, CLASSES)
    _check_split(split)
    if modifier is not None:
        images, labels = _shifted(base, modifier, split,
                                  str(root if root is not None else default_data_root()), download)
        return ImageSet(images.copy(), None if labels is None else labels.copy(), text, split)
    if text not in CATALOG:
        path = Path(text).expanduser()
        if path.is_dir():
            if (path / split).is_dir():
                path = path / split
            if unlabelled:  # a segmentation folder's frames are under images/
                frames = path / "images" if formats.is_segmentation_folder(path) else path
                return ImageSet(formats.read_frames(frames, image_size), None, text, split)
            if formats.is_segmentation_folder(path):
                images, masks = formats.read_segmentation_folder(path, image_size)
                return ImageSet(images, masks, text, split, void=formats.SEGMENTATION_VOID)
            images, labels = formats.read_image_folder(path, image_size)
            return ImageSet(images, labels, str(name_or_path), split)
        _variants(text)  # raises the unknown-dataset error
    root = Path(root) if root is not None else default_data_root()
    folder = root / text
    variant = _local_variant(text, folder, split)
    if variant is None:
        variant = _variants(text)[0]
        files = variant.files[split]
        if not (download and downloads_allowed()):
            raise EdgeCalibError(
                f"{text} {split} split not found in {folder} (expected "
                f"{', '.join(f.name for f in files)}); run `edge-calib data fetch {text} "
                f"--root {root}` or copy the canonical files there")
        for f in files:
            fetch_file(f, folder / f.name)
    paths = [folder / f.name for f in variant.files[split]]
    for remote, path in zip(variant.files[split], paths):
        if not remote.verify(path):
            raise EdgeCalibError(f"{path} is corrupt or not the canonical file ({remote.algorithm} "
                                 f"differs from {remote.digest}); delete it and fetch it again")
    images, labels = variant.reader(paths)
    return ImageSet(images, labels, text, split)
