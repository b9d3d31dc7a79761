"""What a command may allocate, checked before it does: the model file with its external data,
and an input's pixels (an image size given on the command line or read from a model).
Environment variables raise them."""

import os

from .errors import EdgeCalibError

LIMITS = {"EDGE_CALIB_MAX_MODEL_BYTES": 2 << 30, "EDGE_CALIB_MAX_INPUT_PIXELS": 1 << 24}


def limit(name: str) -> int:
    """A limit: its environment variable when set (a positive integer), else LIMITS."""
    value = os.environ.get(name)
    if value is None:
        return LIMITS[name]
    if not value.isdigit() or int(value) <= 0:
        raise EdgeCalibError(f"${name}={value!r}: give a positive whole number")
    return int(value)


def check_input_pixels(height: int, width: int, what: str) -> None:
    """Refuse an input of more pixels than $EDGE_CALIB_MAX_INPUT_PIXELS allows (4096x4096)."""
    most = limit("EDGE_CALIB_MAX_INPUT_PIXELS")
    if height * width > most:
        raise EdgeCalibError(f"{what}: an input of {height}x{width} pixels is over the limit of "
                             f"{most:,} pixels ($EDGE_CALIB_MAX_INPUT_PIXELS raises it)")
