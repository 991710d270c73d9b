"""Benchmark evaluation: PSNR / SSIM on Y (border = scale) and the NTIRE kit's RGB PSNR, per image and mean.

``check_dataset`` runs first, before any model is loaded or pixel computed: every file of every pair is decoded
once (a truncated body is found there, not half-way through), HR and LR sizes must agree, and the HR images must
be large enough for the metrics after the border crop. A mean over fewer images than the set holds is not the
benchmark's figure, so any bad pair stops the evaluation with one line naming it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dsclora.data.benchmark import Pair, find_pairs, load_pair
from dsclora.data.images import DEFAULT_MAX_PIXELS, ImageTooLarge, to_array, to_tensor, to_uint8, verify_image
from dsclora.errors import DscloraError
from dsclora.measure.metrics import SSIM_WINDOW, psnr_rgb, psnr_y, ssim_y

Upscale = Callable[[torch.Tensor], torch.Tensor]  # (1, C, h, w) in [0, 1] -> (1, C, s·h, s·w), any device


def _pair_problem(pair: Pair, scale: int, min_side: int, max_pixels: int) -> str | None:
    """Why ``pair`` cannot be evaluated at ``scale`` (None if it can); every file is decoded once."""
    try:
        h, w = verify_image(pair.hr, max_pixels).stored_size
        lr = verify_image(pair.lr, max_pixels).stored_size if pair.lr is not None else None
    except ImageTooLarge as exc:
        return f"{exc}: eval reads images up to that size; crop or downscale the pair to evaluate it"
    except DscloraError as exc:
        return str(exc)
    h, w = h - h % scale, w - w % scale  # HR is mod-cropped to the scale
    if lr is not None and (lr[0] * scale, lr[1] * scale) != (h, w):
        return f"{pair.name}: LR {lr[1]}x{lr[0]} times {scale} does not give HR {w}x{h} ({pair.lr})"
    if min(h, w) < min_side:
        return (
            f"{pair.hr} is too small to evaluate at x{scale}: the metrics crop {scale} pixels each side and SSIM "
            f"needs {SSIM_WINDOW} more, so HR images need at least {min_side} pixels a side"
        )
    return None


def check_dataset(
    root: str | os.PathLike, scale: int, limit: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> list[Pair]:
    """The pairs ``evaluate_dataset`` will read, each verified (see the module docstring); one line if any fails."""
    pairs = find_pairs(root, scale)[:limit]
    min_side = SSIM_WINDOW + 2 * scale
    problems = [p for p in (_pair_problem(pair, scale, min_side, max_pixels) for pair in pairs) if p]
    if problems:
        more = f" (and {len(problems) - 1} more bad pair(s) in {root})" if len(problems) > 1 else ""
        raise DscloraError(problems[0] + more)
    return pairs


@torch.inference_mode()
def super_resolve_uint8(upscale: Upscale, lr: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
    """uint8 LR (H, W, 3) -> uint8 SR, clamped and rounded as the literature evaluates it."""
    return to_uint8(to_array(upscale(to_tensor(lr).to(device))))


def evaluate_dataset(
    upscale: Upscale,
    root: str | os.PathLike,
    scale: int,
    device: torch.device | str = "cpu",
    progress: bool = True,
    limit: int | None = None,
) -> dict:
    """Mean and per-image ``psnr_y``, ``ssim_y``, ``psnr_rgb`` of ``upscale`` on one benchmark folder."""
    pairs = find_pairs(root, scale)[:limit]
    rows = []
    for pair in tqdm(pairs, desc=Path(root).name, unit="img", disable=not progress, leave=False):
        hr, lr = load_pair(pair, scale)
        sr = super_resolve_uint8(upscale, lr, device)
        rows.append(
            {
                "name": pair.name,
                "psnr_y": psnr_y(sr, hr, scale),
                "ssim_y": ssim_y(sr, hr, scale),
                "psnr_rgb": psnr_rgb(sr, hr, scale),
            }
        )
    return {
        "dataset": Path(root).name,
        "path": str(root),
        "scale": scale,
        "images": len(rows),
        "psnr_y": float(np.mean([r["psnr_y"] for r in rows])),
        "ssim_y": float(np.mean([r["ssim_y"] for r in rows])),
        "psnr_rgb": float(np.mean([r["psnr_rgb"] for r in rows])),
        "per_image": rows,
    }
