"""Exact tiling: a large image super-resolved in windows whose seams cannot be seen (or measured).

The LR image is cut into ``tile``-sized cores; each runs inside a window reaching ``overlap`` pixels further
on every side, and only the core's output is kept. An output pixel of a SPAN depends on ``3·blocks + 3`` LR
pixels each side (one per chained 3x3 conv: its ``receptive_radius``), so an overlap at least that large makes
the tiled result equal the untiled one up to float rounding. Windows at the image edge shift inward instead of
shrinking: a window that touches the edge sees the same zero padding the whole image would, and every window
of an image has the same shape, so a compiled back-end compiles once per image size and oneDNN reuses its
primitives.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

import torch

from dsclora.errors import DscloraError

Runner = Callable[[torch.Tensor], torch.Tensor]


class NonFiniteOutput(DscloraError):
    """The network's output holds NaN or Inf (a broken network, or a precision it overflows in): written, it
    would be a silently black or garbage image. Callers name the input."""


def check_finite(out: torch.Tensor) -> torch.Tensor:
    """``out``, or ``NonFiniteOutput`` if any value is NaN or Inf. One float64 sum (NaN and Inf survive it, and
    no finite output reaches float64's range): no output-sized temporary."""
    if not torch.isfinite(out.sum(dtype=torch.float64)):
        raise NonFiniteOutput("the network produced NaN/Inf")
    return out


def tile_windows(size: int, tile: int, overlap: int) -> list[tuple[int, int, int]]:
    """(core start, core end, window start) along one axis; every window spans ``min(tile + 2·overlap, size)``.

    A window starts ``overlap`` before its core, shifted inward at the edges: a core then always has
    ``overlap`` pixels of context on each side or reaches the image edge on that side.
    """
    span = min(tile + 2 * overlap, size)
    return [(s, min(s + tile, size), min(max(s - overlap, 0), size - span)) for s in range(0, size, tile)]


class TiledUpscaler:
    """A runner with its scale and tiling: called on (N, C, h, w) it returns the fp32 (N, C, s·h, s·w) output,
    or raises ``NonFiniteOutput`` where the network gave NaN or Inf.

    ``tile = 0`` runs whole images; otherwise windows of ``tile + 2·overlap`` pixels (see the module docstring).
    """

    def __init__(self, runner: Runner, scale: int, tile: int = 0, overlap: int = 0) -> None:
        if tile < 0 or overlap < 0:
            raise DscloraError("tile size and overlap must be >= 0")
        self.runner, self.scale, self.tile, self.overlap = runner, scale, tile, overlap

    def _whole(self, h: int, w: int) -> bool:
        return self.tile == 0 or (h <= self.tile and w <= self.tile)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        if self._whole(h, w):
            return check_finite(self.runner(x).float())
        s = self.scale
        span_h, span_w = min(self.tile + 2 * self.overlap, h), min(self.tile + 2 * self.overlap, w)
        out = None
        for y0, y1, wy in tile_windows(h, self.tile, self.overlap):
            for x0, x1, wx in tile_windows(w, self.tile, self.overlap):
                sr = check_finite(self.runner(x[:, :, wy : wy + span_h, wx : wx + span_w]))
                if out is None:
                    out = torch.empty(x.shape[0], sr.shape[1], h * s, w * s, device=sr.device)
                oy, ox = (y0 - wy) * s, (x0 - wx) * s
                out[:, :, y0 * s : y1 * s, x0 * s : x1 * s] = sr[:, :, oy : oy + (y1 - y0) * s, ox : ox + (x1 - x0) * s]
        return out

    def forward_shapes(self, sizes: Iterable[tuple[int, int]]) -> Counter[tuple[int, int]]:
        """How many window forwards of each input shape images of these (height, width) take (what ``auto``
        weighs)."""
        shapes: Counter[tuple[int, int]] = Counter()
        for h, w in sizes:
            if self._whole(h, w):
                shapes[h, w] += 1
            else:
                span = self.tile + 2 * self.overlap
                shapes[min(span, h), min(span, w)] += -(-h // self.tile) * -(-w // self.tile)
        return shapes
