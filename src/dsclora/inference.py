"""Running a model on images: tiling with exact seams, and the bicubic pseudo-model.

Tiling: the LR image is cut into ``tile``-sized cores; each runs inside a window reaching ``overlap`` pixels
further on every side, and only the core's output is kept. A SPAN output pixel depends on ``3·blocks + 3`` LR
pixels each side (one per chained 3x3 conv), so an overlap at least that large makes the tiled result equal
the untiled one up to float rounding. Windows at the image edge shift inward instead of shrinking: a window
that touches the edge sees the same zero padding the whole image would, and every window of an image has the
same shape, so a compiled back-end compiles once per image size (oneDNN also reuses its primitives).
"""

from __future__ import annotations

from collections import Counter
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
    span_h, span_w = min(tile + 2 * overlap, h), min(tile + 2 * overlap, w)
    for y0, y1, wy in tile_windows(h, tile, overlap):
        for x0, x1, wx in tile_windows(w, tile, overlap):
            sr = model(x[:, :, wy : wy + span_h, wx : wx + span_w]).float()
            if out is None:
                out = sr.new_empty(x.shape[0], sr.shape[1], h * scale, w * scale)
            oy, ox = (y0 - wy) * scale, (x0 - wx) * scale
            out[:, :, y0 * scale : y1 * scale, x0 * scale : x1 * scale] = sr[
                :, :, oy : oy + (y1 - y0) * scale, ox : ox + (x1 - x0) * scale
            ]
            if on_tile is not None:
                on_tile()
    return out


def forward_shapes(sizes: list[tuple[int, int]], tile: int, overlap: int) -> Counter[tuple[int, int]]:
    """How many forwards of each input shape ``tiled_forward`` runs for images of these (height, width)."""
    shapes: Counter[tuple[int, int]] = Counter()
    for h, w in sizes:
        if tile == 0 or (h <= tile and w <= tile):
            shapes[h, w] += 1
        else:
            shapes[min(tile + 2 * overlap, h), min(tile + 2 * overlap, w)] += -(-h // tile) * -(-w // tile)
    return shapes


def tile_windows(size: int, tile: int, overlap: int) -> list[tuple[int, int, int]]:
    """(core start, core end, window start) along one axis; every window spans ``min(tile + 2·overlap, size)``.

    A window starts ``overlap`` before its core, shifted inward at the edges: a core then always has
    ``overlap`` pixels of context on each side or reaches the image edge on that side.
    """
    span = min(tile + 2 * overlap, size)
    return [(s, min(s + tile, size), min(max(s - overlap, 0), size - span)) for s in range(0, size, tile)]


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
