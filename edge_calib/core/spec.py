"""The classifier's input specification: size, channels and normalisation.

The spec travels in every checkpoint and every deploy bundle, so the workstation (training)
and the device (runtime) pre-process images with this one piece of code. numpy + OpenCV only.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .errors import EdgeCalibError


@dataclass(frozen=True)
class InputSpec:
    """Images become float32 NCHW arrays ``(u8 / 255 - mean) / std`` at ``height x width``,
    channels in ``colour_order`` (RGB, or BGR for models trained on OpenCV's order)."""

    height: int
    width: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    colour_order: str = "RGB"

    def __post_init__(self):
        if self.colour_order not in ("RGB", "BGR"):
            raise EdgeCalibError(f"input spec: colour order must be RGB or BGR, got "
                                 f"{self.colour_order!r}")
        if any(not s > 0 for s in self.std):
            raise EdgeCalibError(f"input spec: std must be positive, got {list(self.std)}")
        if self.channels not in (1, 3):
            raise EdgeCalibError(f"input spec: channels must be 1 or 3, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise EdgeCalibError("input spec: mean and std need one value per channel")
        if self.height <= 0 or self.width <= 0:
            raise EdgeCalibError(f"input spec: bad size {self.height}x{self.width}")

    @property
    def lo(self) -> tuple[float, ...]:
        """Smallest normalised value per channel (pixel 0)."""
        return tuple((0.0 - m) / s for m, s in zip(self.mean, self.std))

    @property
    def hi(self) -> tuple[float, ...]:
        """Largest normalised value per channel (pixel 255)."""
        return tuple((1.0 - m) / s for m, s in zip(self.mean, self.std))

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    def to_dict(self) -> dict:
        return {"height": self.height, "width": self.width, "channels": self.channels,
                "mean": list(self.mean), "std": list(self.std), "layout": "NCHW",
                "colour_order": self.colour_order}

    @classmethod
    def from_dict(cls, d: dict) -> "InputSpec":
        try:
            return cls(int(d["height"]), int(d["width"]), int(d["channels"]),
                       tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]),
                       str(d.get("colour_order", "RGB")))
        except (KeyError, TypeError, ValueError) as exc:
            raise EdgeCalibError(f"input spec is malformed: {exc!r}") from None

    def resize_uint8(self, images: np.ndarray) -> np.ndarray:
        """uint8 images (N,H,W), (N,H,W,1|3|4) RGB(A), any size -> uint8 (N,h,w,C) of this spec."""
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise EdgeCalibError(f"expected uint8 images, got {images.dtype}")
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
            raise EdgeCalibError(f"expected images shaped (N,H,W[,C]), got {images.shape}")
        n, h, w, _ = images.shape
        out = np.empty((n, self.height, self.width, self.channels), np.uint8)
        same_size = (h, w) == (self.height, self.width)
        interp = cv2.INTER_AREA if (h > self.height and w > self.width) else cv2.INTER_LINEAR
        for i in range(n):
            img = images[i]
            if img.shape[-1] == 4:
                img = img[..., :3]
            if not same_size:
                img = cv2.resize(img, (self.width, self.height), interpolation=interp)
                if img.ndim == 2:
                    img = img[..., None]
            out[i] = _convert_channels(img, self.channels)
        return out

    def normalize(self, images_u8: np.ndarray) -> np.ndarray:
        """uint8 (N,h,w,C) already at this spec's size and channels -> float32 (N,C,h,w)."""
        if self.colour_order == "BGR" and self.channels == 3:
            images_u8 = images_u8[..., ::-1]
        x = images_u8.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255.0)
        mean = np.asarray(self.mean, np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(1, -1, 1, 1)
        return (x - mean) / std

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """Any uint8 RGB/grey images -> the classifier's float32 NCHW input."""
        return self.normalize(self.resize_uint8(images))

    def to_uint8(self, x: np.ndarray) -> np.ndarray:
        """Inverse of ``normalize``: float32 (N,C,h,w) -> uint8 (N,h,w,C), for viewing."""
        mean = np.asarray(self.mean, np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(1, -1, 1, 1)
        u = np.clip((x * std + mean) * 255.0 + 0.5, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
        return u[..., ::-1] if self.colour_order == "BGR" and self.channels == 3 else u


def _convert_channels(img: np.ndarray, channels: int) -> np.ndarray:
    have = img.shape[-1]
    if have == channels:
        return img
    if have == 1 and channels == 3:
        return np.repeat(img, 3, axis=-1)
    if have == 3 and channels == 1:
        return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None]
    raise EdgeCalibError(f"cannot convert {have}-channel images to {channels} channels")


DIGITS_RGB32 = InputSpec(32, 32, 3, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
DIGITS_GREY28 = InputSpec(28, 28, 1, (0.5,), (0.5,))
# the CamVid segmenter's input: 480x360 frames at half resolution (masks are scored at 480x360)
CAMVID_RGB180 = InputSpec(180, 240, 3, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
