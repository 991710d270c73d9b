"""Benchmark evaluation: PSNR / SSIM on Y (border = scale) and the NTIRE kit's RGB PSNR, per image and mean."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dsclora.data.benchmark import find_pairs, load_pair
from dsclora.data.io import to_uint8
from dsclora.inference import Runner, tiled_forward
from dsclora.metrics import psnr_rgb, psnr_y, ssim_y


@torch.inference_mode()
def super_resolve_uint8(
    model: Runner, lr: np.ndarray, scale: int, device: torch.device, tile: int = 0, overlap: int = 24
) -> np.ndarray:
    x = torch.from_numpy(lr.transpose(2, 0, 1).astype(np.float32) / 255.0)[None].to(device)
    sr = tiled_forward(model, x, scale, tile, overlap)[0]
    return to_uint8(sr.permute(1, 2, 0).cpu().numpy())


def evaluate_dataset(
    model: Runner,
    root: str | os.PathLike,
    scale: int,
    device: torch.device,
    tile: int = 0,
    overlap: int = 24,
    progress: bool = True,
    limit: int | None = None,
) -> dict:
    """Mean and per-image ``psnr_y``, ``ssim_y``, ``psnr_rgb`` of ``model`` on one benchmark folder."""
    pairs = find_pairs(root, scale)[:limit]
    rows = []
    for pair in tqdm(pairs, desc=Path(root).name, unit="img", disable=not progress, leave=False):
        hr, lr = load_pair(pair, scale)
        sr = super_resolve_uint8(model, lr, scale, device, tile, overlap)
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
