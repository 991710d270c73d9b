"""The README's main job: take real photos shipped with scikit-image, make MATLAB-bicubic x``s`` LR versions,
super-resolve them with the default model and report the PSNR gain over bicubic (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dsclora.data.benchmark import modcrop
from dsclora.data.images import LoadedImage, write_image
from dsclora.data.imresize import imresize
from dsclora.errors import DscloraError
from dsclora.measure.evaluate import super_resolve_uint8
from dsclora.measure.metrics import psnr_y, ssim_y
from dsclora.models.bicubic import Bicubic
from dsclora.models.descriptor import ModelDescriptor

SAMPLES = ("astronaut", "coffee", "chelsea")


def sample_photos() -> dict[str, np.ndarray]:
    try:
        from skimage import data
    except ImportError:
        raise DscloraError("the demo's sample photos come from scikit-image: pip install scikit-image") from None
    return {name: getattr(data, name)() for name in SAMPLES}


@torch.inference_mode()
def run_demo(loaded: ModelDescriptor, photos: dict[str, np.ndarray], outdir: Path, device: torch.device) -> list[dict]:
    scale = loaded.scale
    rows = []
    bicubic = Bicubic(scale)
    for name, photo in photos.items():
        hr = modcrop(photo[..., :3], scale)
        lr = imresize(hr, 1.0 / scale)
        sr = super_resolve_uint8(loaded.runnable(), lr, device)
        bic = super_resolve_uint8(bicubic, lr, device)
        for suffix, img in (("lr", lr), ("bicubic", bic), ("sr", sr), ("hr", hr)):
            write_image(outdir / f"{name}_{suffix}.png", LoadedImage(img.astype(np.float32) / 255.0))
        rows.append(
            {
                "image": name,
                "bicubic_psnr_y": psnr_y(bic, hr, scale),
                "sr_psnr_y": psnr_y(sr, hr, scale),
                "sr_ssim_y": ssim_y(sr, hr, scale),
            }
        )
    print(f"model: {loaded.label}   x{scale}   outputs in {outdir}/")
    print(f"{'image':<12}{'bicubic':>10}{'model':>10}{'gain':>8}{'SSIM':>8}   (PSNR on Y, dB)")
    for r in rows:
        gain = r["sr_psnr_y"] - r["bicubic_psnr_y"]
        print(f"{r['image']:<12}{r['bicubic_psnr_y']:>10.2f}{r['sr_psnr_y']:>10.2f}{gain:>+8.2f}{r['sr_ssim_y']:>8.4f}")
    return rows
