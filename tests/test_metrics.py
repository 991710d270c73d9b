"""Y-PSNR / SSIM by hand and against scikit-image (the independent reference)."""

from __future__ import annotations

import numpy as np
import pytest

from dsclora.measure.metrics import psnr, rgb_to_y, ssim


def test_y_channel_and_psnr_by_hand() -> None:
    white = np.full((4, 4, 3), 255, np.uint8)
    assert np.allclose(rgb_to_y(white), 235.0)  # BT.601 studio swing: 16 + 219
    a = np.zeros((10, 10))
    b = a.copy()
    b[0, 0] = 10.0  # MSE = 100 / 100 = 1 -> PSNR = 10 log10(255²)
    assert np.isclose(psnr(a, b), 20 * np.log10(255))


def test_ssim_matches_scikit_image() -> None:
    metrics = pytest.importorskip("skimage.metrics", reason="scikit-image is the independent SSIM reference")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (40, 50)).astype(np.float64)
    b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255)
    reference = metrics.structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert abs(ssim(a, b) - reference) < 1e-9
