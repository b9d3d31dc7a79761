import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# Tests never touch the internet: automatic dataset downloads are off.
os.environ["EDGE_CALIB_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The canonical MNIST/USPS files beside the project (skips when they are absent)."""
    if not (SHARED_DATA / "mnist").is_dir() or not (SHARED_DATA / "usps").is_dir():
        pytest.skip(f"real digit data not found at {SHARED_DATA}")
    return SHARED_DATA
