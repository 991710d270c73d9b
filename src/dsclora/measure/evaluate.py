"""Benchmark evaluation: PSNR / SSIM on Y (border = scale) and the NTIRE kit's RGB PSNR, per image and mean."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dsclora.data.benchmark import find_pairs, load_pair
from dsclora.data.images import to_array, to_tensor, to_uint8
from dsclora.measure.metrics import psnr_rgb, psnr_y, ssim_y

Upscale = Callable[[torch.Tensor], torch.Tensor]  # (1, C, h, w) in [0, 1] -> (1, C, s·h, s·w), any device


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
