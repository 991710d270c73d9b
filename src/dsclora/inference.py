"""Running a model on images: tiling with exact seams, and the bicubic pseudo-model.

Tiling: each LR tile is extended by ``overlap`` pixels on every side (clipped at the image edge), run, and
only its own region is kept. A SPAN output pixel depends on ``3·blocks + 3`` LR pixels each side (one per
chained 3x3 conv), so an overlap at least that large makes the tiled result equal the untiled one up to
float rounding; at the image edge a tile sees the same zero padding the whole image would.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from dsclora.data.imresize import imresize
from dsclora.data.io import LoadedImage, to_uint8
from dsclora.errors import DscloraError

Runner = Callable[[torch.Tensor], torch.Tensor]


class Bicubic(nn.Module):
    """MATLAB bicubic upscaling as a model, so the classic baseline runs through the same evaluation."""

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for img in x.detach().cpu().numpy():
            # Round-trip to uint8 (exact for 8-bit inputs) so each pass rounds as MATLAB does.
            u8 = to_uint8(img.transpose(1, 2, 0))
            up = imresize(u8, float(self.scale)).astype(np.float32) / 255.0
            out.append(torch.from_numpy(up.transpose(2, 0, 1).copy()))
        return torch.stack(out).to(x.device)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DscloraError("--device cuda: no CUDA device is available")
    if name == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise DscloraError("--device mps: MPS is not available")
    if name not in ("cpu", "cuda", "mps"):
        raise DscloraError(f"unknown device {name!r} (use auto, cpu, cuda or mps)")
    return torch.device(name)


@torch.inference_mode()
def tiled_forward(
    model: Runner,
    x: torch.Tensor,
    scale: int,
    tile: int = 0,
    overlap: int = 24,
    on_tile: Callable[[], None] | None = None,
) -> torch.Tensor:
    """``model(x)`` as fp32, computed tile by tile when ``tile > 0`` (tile = LR core size).

    ``model`` is any callable NCHW -> NCHW: a module, or a runner from ``backends.make_runner``.
    """
    if tile < 0 or overlap < 0:
        raise DscloraError("tile size and overlap must be >= 0")
    _, _, h, w = x.shape
    if tile == 0 or (h <= tile and w <= tile):
        return model(x).float()
    out = None
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            py0, px0 = max(y0 - overlap, 0), max(x0 - overlap, 0)
            py1, px1 = min(y1 + overlap, h), min(x1 + overlap, w)
            sr = model(x[:, :, py0:py1, px0:px1]).float()
            if out is None:
                out = sr.new_empty(x.shape[0], sr.shape[1], h * scale, w * scale)
            oy, ox = (y0 - py0) * scale, (x0 - px0) * scale
            out[:, :, y0 * scale : y1 * scale, x0 * scale : x1 * scale] = sr[
                :, :, oy : oy + (y1 - y0) * scale, ox : ox + (x1 - x0) * scale
            ]
            if on_tile is not None:
                on_tile()
    return out


def upscale_image(
    model: Runner,
    image: LoadedImage,
    scale: int,
    device: torch.device,
    tile: int = 0,
    overlap: int = 24,
) -> LoadedImage:
    """Super-resolve one loaded image; alpha (if any) follows by MATLAB bicubic, the kind is kept."""
    x = torch.from_numpy(np.ascontiguousarray(image.rgb.transpose(2, 0, 1)))[None].to(device)
    sr = tiled_forward(model, x, scale, tile, overlap)[0].clamp(0, 1)
    rgb = sr.permute(1, 2, 0).cpu().numpy()
    alpha = None
    if image.alpha is not None:
        alpha = np.clip(imresize(image.alpha.astype(np.float64), float(scale)), 0, 1).astype(np.float32)
    return LoadedImage(rgb, alpha=alpha, grayscale=image.grayscale, bits=image.bits)
