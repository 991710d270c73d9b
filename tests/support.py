"""Where tests find the workspace's data and official weights, skipping with the precise reason when absent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dsclora.data.images import to_tensor
from dsclora.data.imresize import imresize

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DSCLORA_SHARED", REPO.parent / "shared"))
WEIGHTS = SHARED / "weights"
BENCHMARK = SHARED / "data" / "benchmark"
TRAIN = SHARED / "data" / "train"
TRAIN_LR = SHARED / "data" / "train_lr_x4"

OFFICIAL = {
    "dscf": "dscf_team23_DSCF.pth",
    "span-tiny": "ntire2024_team39_spantiny_ch26_slim.pth",
    "span-ch28": "ntire2024_team38_span_ch28_slim.pth",
    "spanf": "ntire2025_team24_spanf.pth",
    "espan": "ntire2025_team36_espan.pth",
    "team46": "ntire2025_team46_span.pth",
    "craft": "ntire2024_team34_craft.pth",
}


def official_weight(key: str) -> Path:
    path = WEIGHTS / OFFICIAL[key]
    if not path.is_file():
        pytest.skip(f"official checkpoint {OFFICIAL[key]} not found in {WEIGHTS} (set DSCLORA_SHARED)")
    return path


def benchmark_set(name: str) -> Path:
    path = BENCHMARK / name
    if not path.is_dir():
        pytest.skip(f"benchmark set {name} not found in {BENCHMARK} (set DSCLORA_SHARED)")
    return path


def training_folder(name: str) -> Path:
    path = TRAIN / name
    if not path.is_dir():
        pytest.skip(f"training set {name} not found in {TRAIN} (set DSCLORA_SHARED)")
    return path


# ---------------------------------------------------------------------------------------- self-made fixtures
# What a clone without ../shared tests on: real photos from scikit-image's wheel (a test dependency), their
# MATLAB-bicubic LR versions, and the embedded model. Tests of published numbers or official files keep
# skipping without ../shared; tests of generic behaviour use these.


def photos() -> list[np.ndarray]:
    """Three real photos (uint8 RGB) shipped inside scikit-image's wheel."""
    data = pytest.importorskip("skimage.data", reason="scikit-image (a test dependency) ships the sample photos")
    return [data.astronaut(), data.coffee(), data.chelsea()]


def photo_crops(count: int, height: int, width: int) -> list[np.ndarray]:
    """``count`` distinct HR crops of the photos, each ``height`` x ``width``."""
    crops = []
    for i in range(count):
        photo = photos()[i % 3]
        top, left = 40 + 70 * (i // 3), 60 + 50 * (i // 3)
        crops.append(np.ascontiguousarray(photo[top : top + height, left : left + width]))
    return crops


def lr_photos(count: int = 2, height: int = 40, width: int = 52, scale: int = 4) -> list[torch.Tensor]:
    """Real LR images (1, 3, h, w) in [0, 1]: MATLAB-bicubic x1/``scale`` of photo crops."""
    crops = photo_crops(count, height * scale, width * scale)
    return [to_tensor(imresize(crop, 1 / scale)) for crop in crops]


def make_benchmark(root: Path, scale: int = 4, count: int = 3, height: int = 96, width: int = 80) -> Path:
    """A benchmark folder in the shared data's layout (``x<S>/HR`` + ``x<S>/LR``, same names): HR crops of the
    photos, LR by MATLAB bicubic, as the official sets were made."""
    for sub in ("HR", "LR"):
        (root / f"x{scale}" / sub).mkdir(parents=True, exist_ok=True)
    for i, crop in enumerate(photo_crops(count, height, width)):
        Image.fromarray(crop).save(root / f"x{scale}" / "HR" / f"img{i}.png")
        Image.fromarray(imresize(crop, 1 / scale)).save(root / f"x{scale}" / "LR" / f"img{i}.png")
    return root
