"""Shared fixtures: the workspace's ``../shared`` data and official weights (skipped with a reason if absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DSCLORA_SHARED", REPO.parent / "shared"))
WEIGHTS = SHARED / "weights"
BENCHMARK = SHARED / "data" / "benchmark"
TRAIN = SHARED / "data" / "train"

OFFICIAL = {
    "dscf": "dscf_team23_DSCF.pth",
    "span-tiny": "ntire2024_team39_spantiny_ch26_slim.pth",
    "span-ch28": "ntire2024_team38_span_ch28_slim.pth",
    "spanf": "ntire2025_team24_spanf.pth",
    "espan": "ntire2025_team36_espan.pth",
    "team46": "ntire2025_team46_span.pth",
}


def official_weight(key: str) -> Path:
    path = WEIGHTS / OFFICIAL[key]
    if not path.is_file():
        pytest.skip(f"official checkpoint {OFFICIAL[key]} not found under {WEIGHTS} (../shared is absent)")
    return path


def benchmark_set(name: str) -> Path:
    path = BENCHMARK / name
    if not path.is_dir():
        pytest.skip(f"benchmark set {name} not found under {BENCHMARK} (../shared is absent)")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep tests out of the user's cache; point the weights search path at the shared folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("DSCLORA_WEIGHTS_DIR", str(WEIGHTS))
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def sample_photo():
    """A real photo shipped inside scikit-image's wheel (no download)."""
    data = pytest.importorskip("skimage.data", reason="scikit-image (a test dependency) ships the sample photos")
    return data.astronaut()
