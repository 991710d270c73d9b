"""Where tests find the workspace's data and official weights, skipping with the precise reason when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
