"""Image quality metrics as SR papers compute them.

- Y channel of BT.601 YCbCr from 8-bit RGB: ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255``
  (MATLAB ``rgb2ycbcr``; RGB in 0..255), kept as float like BasicSR ``calculate_psnr(test_y_channel=True)``.
- ``border`` pixels are cropped on every side (``scale`` in the literature).
- PSNR with peak 255; SSIM after Wang et al. 2004: 11x11 Gaussian window, σ = 1.5, K1 = 0.01, K2 = 0.03,
  statistics over the valid region only (MATLAB ``ssim_index`` / BasicSR), averaged over the map.
- ``psnr_rgb`` is what the NTIRE ESR kit reports: all three channels of the uint8 images, border cropped.
Inputs are uint8 (H, W, 3) arrays: SR output is clamped and rounded first (``data.io.to_uint8``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

SSIM_WINDOW = 11  # side of the Gaussian window: SSIM needs images at least this large after the border crop


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    rgb = img.astype(np.float64)
    return 16.0 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0


def _crop(img: np.ndarray, border: int) -> np.ndarray:
    return img[border:-border, border:-border] if border > 0 else img


def _check(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def _gaussian_1d(size: int = SSIM_WINDOW, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma * sigma))
    return g / g.sum()


def _gaussian_filter_valid(maps: torch.Tensor) -> torch.Tensor:
    """Valid-region 11x11 Gaussian filtering of (N, 1, H, W), done separably (the window is an outer product)."""
    g = _gaussian_1d()
    return F.conv2d(F.conv2d(maps, g.view(1, 1, -1, 1)), g.view(1, 1, 1, -1))


def ssim(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """Mean SSIM of two single-channel images (valid-region Gaussian statistics)."""
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    x = torch.from_numpy(a.astype(np.float64))
    y = torch.from_numpy(b.astype(np.float64))
    stats = _gaussian_filter_valid(torch.stack([x, y, x * x, y * y, x * y])[:, None])[:, 0]
    mu_x, mu_y, exx, eyy, exy = stats
    sxx, syy, sxy = exx - mu_x**2, eyy - mu_y**2, exy - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return ssim_map.mean().item()


def psnr_y(sr: np.ndarray, hr: np.ndarray, border: int) -> float:
    _check(sr, hr)
    return psnr(_crop(rgb_to_y(sr), border), _crop(rgb_to_y(hr), border))


def ssim_y(sr: np.ndarray, hr: np.ndarray, border: int) -> float:
    _check(sr, hr)
    return ssim(_crop(rgb_to_y(sr), border), _crop(rgb_to_y(hr), border))


def psnr_rgb(sr: np.ndarray, hr: np.ndarray, border: int) -> float:
    _check(sr, hr)
    return psnr(_crop(sr, border), _crop(hr, border))
