"""Parsers for the canonical digit-dataset formats and for image folders.

Every parser returns uint8 images shaped (N, H, W, C) and int64 labels (or None).
"""

from __future__ import annotations

import bz2
import errno
import gzip
import io
import os
import struct
from pathlib import Path

import cv2
import numpy as np

from ..core.errors import EdgeCalibError, ResourceExhausted

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def _open_maybe_compressed(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    if path.suffix == ".bz2":
        return bz2.open(path, "rb")
    return open(path, "rb")


def read_idx(path: str | Path) -> np.ndarray:
    """IDX file (MNIST): big-endian header ``0 0 dtype ndim``, ndim uint32 dims, raw data."""
    path = Path(path)
    try:
        with _open_maybe_compressed(path) as handle:
            data = handle.read()
    except (OSError, EOFError) as exc:
        raise EdgeCalibError(f"{path}: cannot read IDX file ({exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise EdgeCalibError(f"{path}: not an IDX file (bad magic)")
    if data[2] != 0x08:
        raise EdgeCalibError(f"{path}: IDX element type 0x{data[2]:02x} is not uint8")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise EdgeCalibError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    count = int(np.prod(dims))
    if len(data) - header != count:
        raise EdgeCalibError(f"{path}: IDX payload has {len(data) - header} bytes, "
                             f"header says {count}")
    return np.frombuffer(data, np.uint8, count, header).reshape(dims)


def usps_float_to_uint8(values: np.ndarray) -> np.ndarray:
    """USPS values in [-1, 1] -> uint8 the way torchvision converts them: (v + 1) / 2 * 255."""
    return ((values + 1.0) / 2.0 * 255.0).astype(np.uint8)


def read_usps_esl(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """ESL ``zip.train.gz``: one image a line, ``label v1 ... v256`` (16x16, values in [-1, 1])."""
    path = Path(path)
    try:
        with _open_maybe_compressed(path) as handle:
            rows = np.loadtxt(handle, dtype=np.float64, ndmin=2)
    except (OSError, EOFError, ValueError) as exc:
        raise EdgeCalibError(f"{path}: cannot parse USPS text file ({exc})") from None
    if rows.shape[1] != 257:
        raise EdgeCalibError(f"{path}: USPS lines need 257 numbers, found {rows.shape[1]}")
    labels = rows[:, 0].astype(np.int64)
    if labels.min() < 0 or labels.max() > 9:
        raise EdgeCalibError(f"{path}: USPS labels outside 0-9")
    images = usps_float_to_uint8(rows[:, 1:]).reshape(-1, 16, 16, 1)
    return images, labels


def read_usps_libsvm(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """LIBSVM ``usps.bz2``: lines ``label idx:value ...``; label 1-10 is digit label-1."""
    path = Path(path)
    images, labels = [], []
    try:
        with _open_maybe_compressed(path) as handle:
            for raw in handle:
                parts = raw.split()
                if not parts:
                    continue
                pixels = np.zeros(256, np.float64)
                for item in parts[1:]:
                    idx, _, val = item.partition(b":")
                    pixels[int(idx) - 1] = float(val)
                labels.append(int(float(parts[0])) - 1)
                images.append(pixels)
    except (OSError, EOFError, ValueError, IndexError) as exc:
        raise EdgeCalibError(f"{path}: cannot parse LIBSVM USPS file ({exc})") from None
    if not images:
        raise EdgeCalibError(f"{path}: no samples in LIBSVM file")
    labels_arr = np.asarray(labels, np.int64)
    if labels_arr.min() < 0 or labels_arr.max() > 9:
        raise EdgeCalibError(f"{path}: LIBSVM USPS labels outside 1-10")
    return usps_float_to_uint8(np.stack(images)).reshape(-1, 16, 16, 1), labels_arr


def read_svhn_mat(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """SVHN ``*_32x32.mat`` (MATLAB v5): ``X`` is 32x32x3xN uint8, ``y`` is Nx1, 10 means 0."""
    from scipy.io import loadmat

    path = Path(path)
    try:
        mat = loadmat(path, variable_names=("X", "y"))
    except Exception as exc:  # scipy raises several types for corrupt files
        raise EdgeCalibError(f"{path}: cannot read SVHN .mat file ({exc})") from None
    if "X" not in mat or "y" not in mat:
        raise EdgeCalibError(f"{path}: SVHN .mat file lacks X or y")
    x, y = mat["X"], mat["y"]
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != y.size:
        raise EdgeCalibError(f"{path}: SVHN X has shape {x.shape}, y has {y.size} labels")
    images = np.ascontiguousarray(x.transpose(3, 0, 1, 2).astype(np.uint8))
    labels = y.reshape(-1).astype(np.int64)
    labels[labels == 10] = 0
    return images, labels


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def list_frames(folder: str | Path) -> list[Path]:
    """Every image under ``folder``, in nested folders too (a camera's frames as they come:
    one folder per sequence or per day), in path order."""
    return sorted(p for p in Path(folder).rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _stack(images: list[np.ndarray], folder, size) -> np.ndarray:
    """Images resized to ``size`` (h, w) when given, grey promoted to RGB when mixed."""
    out = []
    for img in images:
        if size is not None and img.shape[:2] != tuple(size):
            img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)
            img = img[..., None] if img.ndim == 2 else img
        out.append(img)
    if len({img.shape[-1] for img in out}) > 1:
        out = [np.repeat(i, 3, -1) if i.shape[-1] == 1 else i for i in out]
    shapes = {img.shape for img in out}
    if len(shapes) > 1:
        raise EdgeCalibError(f"{folder}: images differ in size {sorted(shapes)[:3]}...; "
                             "give a target size")
    return np.stack(out)


def read_frames(folder: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Unlabelled frames: every image under ``folder``, recursively, as uint8 (N,H,W,C)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EdgeCalibError(f"{folder}: not a folder")
    paths = list_frames(folder)
    if not paths:
        raise EdgeCalibError(f"{folder}: no images found (looked for "
                             f"{', '.join(IMAGE_SUFFIXES)} in it and its subfolders)")
    return _stack([_read_image(p) for p in paths], folder, size)


SEGMENTATION_VOID = 255  # the label value of pixels nobody labelled, in a user's label PNGs


def is_segmentation_folder(folder: str | Path) -> bool:
    return (Path(folder) / "images").is_dir() and (Path(folder) / "labels").is_dir()


def read_segmentation_folder(folder: str | Path, size: tuple[int, int] | None = None
                             ) -> tuple[np.ndarray, np.ndarray]:
    """Labelled frames: ``images/`` and ``labels/`` with the same file stems; each label a
    single-channel PNG of class indices, 255 for unlabelled pixels. Frames are resized to
    ``size`` when given; labels keep their resolution (scores are computed there) and must
    share one size. Returns (frames uint8 (N,H,W,C), masks uint8 (N,h,w))."""
    folder = Path(folder)
    images = {p.stem: p for p in _list_images(folder / "images")}
    labels = {p.stem: p for p in _list_images(folder / "labels")}
    if not images:
        raise EdgeCalibError(f"{folder / 'images'}: no images found")
    unmatched = sorted(set(images) ^ set(labels))
    if unmatched:
        side = "labels" if unmatched[0] in images else "images"
        raise EdgeCalibError(f"{folder}: {len(unmatched)} file stem(s) have no match in "
                             f"{side}/ (first: {unmatched[0]!r}); images/ and labels/ need the "
                             "same stems")
    masks = []
    for stem in sorted(images):
        mask = cv2.imread(str(labels[stem]), cv2.IMREAD_UNCHANGED)
        if mask is None or mask.ndim != 2 or mask.dtype != np.uint8:
            raise EdgeCalibError(f"{labels[stem]}: a label must be a single-channel 8-bit PNG of "
                                 "class indices (255 = unlabelled)")
        masks.append(mask)
    if len({m.shape for m in masks}) > 1:
        raise EdgeCalibError(f"{folder / 'labels'}: labels differ in size "
                             f"{sorted({m.shape for m in masks})[:3]}; they must share one")
    frames = _stack([_read_image(images[s]) for s in sorted(images)], folder, size)
    return frames, np.stack(masks)


def _pixel_cap() -> int:
    """OpenCV's cap on the pixels of an image it decodes (``edge_calib/__init__`` sets it to
    67 MP unless OPENCV_IO_MAX_IMAGE_PIXELS is set)."""
    try:
        return int(os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS", 1 << 26))
    except ValueError:
        return 1 << 26


MAX_PIXELS = _pixel_cap()  # above it an image is refused undecoded, whatever its format


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG file's header without decoding the image; None for
    other formats or an unreadable header."""
    import struct

    handle = io.BytesIO(data)
    try:
        head = handle.read(26)
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
            return struct.unpack(">II", head[16:24])
        if head[:2] != b"\xff\xd8":
            return None
        handle.seek(2)
        while True:  # JPEG markers up to the frame header (SOFn)
            marker = handle.read(2)
            if len(marker) < 2 or marker[0] != 0xFF:
                return None
            if marker[1] in (0xD8, 0x01) or 0xD0 <= marker[1] <= 0xD7:
                continue
            length = struct.unpack(">H", handle.read(2))[0]
            if 0xC0 <= marker[1] <= 0xCF and marker[1] not in (0xC4, 0xC8, 0xCC):
                height, width = struct.unpack(">xHH", handle.read(5))
                return width, height
            handle.seek(length - 2, 1)
    except struct.error:
        return None


def check_pixels(path: str | Path, data: bytes) -> None:
    """An image (``data``, the bytes of ``path``) whose header says it holds more than
    MAX_PIXELS is refused before decoding (a 30000 x 30000 PNG of 876 KB decodes to 2.7 GB); a
    JPEG without its end-of-image marker (a truncated file, which libjpeg would decode with
    grey rows and a warning) is refused."""
    size = header_size(data)
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        raise EdgeCalibError(f"{path}: {size[0]}x{size[1]} pixels is over the cap of "
                             f"{MAX_PIXELS:,} pixels; resize it first")
    if data[:2] == b"\xff\xd8":
        scan = data.rfind(b"\xff\xda")  # the last scan: FF is stuffed (FF00) inside its data,
        if scan < 0 or data.find(b"\xff\xd9", scan) < 0:  # so only its end marker matches
            raise EdgeCalibError(f"{path}: a truncated JPEG (no end-of-image marker)")


# the process's own limits (open files, memory): the reader's failure, not a bad file
RESOURCE_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOMEM)


def imread(path: str | Path, flags: int) -> np.ndarray | None:
    """The image at ``path``, read once and decoded by OpenCV behind the pixel cap (by the
    header, or OpenCV's own check for every other format) and the truncated-JPEG check (one
    line naming the file, no decoder message); None where the file cannot be read or decoded.
    Running out of open files or memory raises ResourceExhausted, as does any OpenCV error
    other than the cap's: the caller's failure, not a bad file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        if exc.errno in RESOURCE_ERRNOS:
            raise ResourceExhausted(f"{path}: cannot read it: {exc.strerror} (the process's "
                                    "own limit, not a bad file)") from None
        return None
    except MemoryError:
        raise ResourceExhausted(f"{path}: out of memory reading it") from None
    check_pixels(path, data)
    try:
        return cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as exc:
        if "MAX_IMAGE_PIXELS" not in str(exc):
            raise ResourceExhausted(f"{path}: OpenCV cannot decode it: "
                                    f"{str(exc).strip().splitlines()[-1][:160]}") from None
        raise EdgeCalibError(f"{path}: over the cap of {MAX_PIXELS:,} pixels (set "
                             "OPENCV_IO_MAX_IMAGE_PIXELS to raise it); resize it first"
                             ) from None


def _read_image(path: Path) -> np.ndarray:
    img = imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise EdgeCalibError(f"{path}: not a readable image")
    if img.dtype != np.uint8:
        img = cv2.convertScaleAbs(img, alpha=255.0 / max(1, int(img.max())))
    if img.ndim == 2:
        return img[..., None]
    if img.shape[-1] == 4:
        img = img[..., :3]
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_image_folder(folder: str | Path, size: tuple[int, int] | None = None):
    """Images of a folder, labelled or not.

    Labelled (ImageFolder layout): one subfolder per class, named by the class index (``0``,
    ``1``, ...). Unlabelled: image files directly in the folder. Images of any size are resized
    to ``size`` (h, w) when given (needed to stack them); otherwise they must share one size.
    Returns (images uint8 (N,H,W,C), labels int64 or None).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise EdgeCalibError(f"{folder}: not a folder")
    class_dirs = sorted((d for d in folder.iterdir() if d.is_dir() and d.name.isdigit()),
                        key=lambda d: int(d.name))
    entries: list[tuple[Path, int | None]] = []
    if class_dirs:
        for d in class_dirs:
            entries += [(p, int(d.name)) for p in _list_images(d)]
    else:
        entries = [(p, None) for p in _list_images(folder)]
    if not entries:
        nested = " (its subfolders are not class indices 0, 1, ...: for unlabelled frames in " \
                 "nested folders give it as --target / --input)" if list_frames(folder) else ""
        raise EdgeCalibError(f"{folder}: no images found (looked for {', '.join(IMAGE_SUFFIXES)}"
                             f" directly or in class-index subfolders){nested}; labelled "
                             "segmentation frames go in images/ and labels/")
    images = _stack([_read_image(path) for path, _ in entries], folder, size)
    labels = None if class_dirs == [] else np.asarray([lab for _, lab in entries], np.int64)
    return images, labels
