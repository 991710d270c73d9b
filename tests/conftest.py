"""Fixtures: a private cache per test session, the weights search path, and a real photo."""

from __future__ import annotations

import pytest
import torch

from support import WEIGHTS


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
