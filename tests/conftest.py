"""Shared test fixtures: the project root on sys.path and the location of ../shared."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MIT1003 = SHARED / "data" / "MIT1003"
METRICS_REFERENCE = SHARED / "metrics_reference"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def require(path):
    """Skip the calling test, with the reason, when a ../shared resource is absent."""
    if not Path(path).exists():
        pytest.skip(f"{path} is absent (it ships in ../shared beside the checkout)")
    return Path(path)


@pytest.fixture
def small_synthetic(monkeypatch):
    """main.py's synthetic fallback shrunk to 24 train / 6 val scenes."""
    import main
    monkeypatch.setattr(main, "SYNTHETIC_SIZES", {"train": 24, "val": 6})
