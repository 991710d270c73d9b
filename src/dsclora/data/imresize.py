"""MATLAB-compatible ``imresize(img, scale, 'bicubic')`` in NumPy.

The SR literature makes LR images with MATLAB; PIL / OpenCV / torch bicubic differ from it by up to several
grey levels, which shifts published PSNR tables. MATLAB's algorithm (``imresize.m``):
- cubic kernel with a = -0.5 (Keys 1981); for downscaling (antialiasing) the kernel is stretched by 1/scale
  and its height scaled by ``scale``, so the kernel width becomes 4/scale;
- output pixel x (1-based) maps to ``u = x/scale + 0.5·(1 - 1/scale)``; taps ``floor(u - width/2) + 0..P-1``
  with ``P = ceil(width) + 2``; weights normalised to sum to one; out-of-range taps mirror symmetrically;
- one dimension at a time, the one with the smaller scale first (height first on ties);
- for uint8 input each 1-D pass rounds (half away from zero) and saturates to uint8 before the next.
The last point matters: it reproduces the official benchmark LR files to ±1 grey level on all interior
pixels, where ports that keep floats between passes match only ~89 % (``../shared/data/README.md``).
"""

from __future__ import annotations

import math

import numpy as np


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


def contributions(in_len: int, out_len: int, scale: float, antialias: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per output position: tap weights (out, P) and 0-based source indices (out, P)."""
    shrink = antialias and scale < 1
    width = 4.0 / scale if shrink else 4.0
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - width / 2.0)
    taps = math.ceil(width) + 2
    index = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]  # 1-based
    distance = u[:, None] - index
    weights = scale * _cubic(scale * distance) if shrink else _cubic(distance)
    weights = weights / weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len)[::-1]])
    index = mirror[np.mod(index.astype(np.int64) - 1, 2 * in_len)]
    keep = np.any(weights != 0, axis=0)
    return weights[:, keep], index[:, keep]


def _resize_axis(img: np.ndarray, axis: int, out_len: int, scale: float, antialias: bool) -> np.ndarray:
    weights, index = contributions(img.shape[axis], out_len, scale, antialias)
    moved = np.moveaxis(img, axis, 0).astype(np.float64, copy=False)
    out = np.zeros((out_len, *moved.shape[1:]), dtype=np.float64)
    expand = (slice(None),) + (None,) * (moved.ndim - 1)
    for tap in range(weights.shape[1]):
        out += weights[:, tap][expand] * moved[index[:, tap]]
    return np.moveaxis(out, 0, axis)


def imresize(
    img: np.ndarray,
    scale: float | None = None,
    output_shape: tuple[int, int] | None = None,
    antialias: bool = True,
) -> np.ndarray:
    """Resize an (H, W) or (H, W, C) array like MATLAB's ``imresize(img, scale, 'bicubic')``.

    uint8 in -> uint8 out with MATLAB's per-pass rounding; float in -> float64 out, unclipped.
    Give either ``scale`` (output size ``ceil(in · scale)``) or ``output_shape`` (H, W).
    """
    if (scale is None) == (output_shape is None):
        raise ValueError("give exactly one of scale and output_shape")
    h, w = img.shape[:2]
    if output_shape is None:
        scales = (float(scale), float(scale))
        output_shape = (math.ceil(h * scale), math.ceil(w * scale))
    else:
        scales = (output_shape[0] / h, output_shape[1] / w)
    if min(output_shape) < 1:
        raise ValueError(f"output size {output_shape} is empty")
    is_uint8 = img.dtype == np.uint8
    out = img
    for axis in sorted((0, 1), key=lambda a: scales[a]):  # stable sort: height first on ties
        out = _resize_axis(out, axis, output_shape[axis], scales[axis], antialias)
        if is_uint8:
            out = np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)
    return out
