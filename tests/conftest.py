"""Shared fixtures: paths to the data in ../shared and small random encoders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DINOMALY_SHARED", REPO.parent / "shared"))
MVTEC_ROOT = SHARED / "data" / "mvtec_ad"
MAGNETIC_TILE_ROOT = SHARED / "data" / "magnetic_tile_defects" / "magnetic_tile"
GOLDEN = SHARED / "golden" / "official_a"

#: A small random encoder that keeps Dinomaly's structure (4 registers, 8 target layers, 2 groups).
TINY_ENCODER = {"pretrained": False, "embed_dim": 48, "depth": 10, "num_heads": 3}
#: That encoder on small inputs (resize 112, crop 98 = 7 x 14): the Dinomaly arguments of the end-to-end tests.
TINY_MODEL = {**TINY_ENCODER, "image_size": 112, "crop_size": 98}


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not available (set DINOMALY_SHARED to the shared folder)")
    return path


@pytest.fixture(scope="session")
def mvtec_root() -> Path:
    _require(MVTEC_ROOT / "bottle")
    return MVTEC_ROOT


@pytest.fixture(scope="session")
def magnetic_tile_root() -> Path:
    return _require(MAGNETIC_TILE_ROOT)


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return _require(GOLDEN)
