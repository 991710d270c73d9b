"""Dependency-free PNG charts and image grids (Pillow only) for the results report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dsclora.fs import atomic_write

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def line_chart(
    series: dict[str, tuple[list[float], list[float]]],
    path: Path,
    title: str,
    xlabel: str,
    ylabel: str,
    size: tuple[int, int] = (760, 420),
) -> None:
    """One line per series (x values, y values), linear axes with five ticks each, legend top right."""
    width, height = size
    left, right, top, bottom = 70, 20, 36, 50
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    xs = [x for xv, _ in series.values() for x in xv]
    ys = [y for _, yv in series.values() for y in yv]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.05 or 1e-3
    y0, y1 = y0 - pad, y1 + pad

    def to_px(x: float, y: float) -> tuple[float, float]:
        px = left + (x - x0) / ((x1 - x0) or 1) * (width - left - right)
        py = height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)
        return px, py

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for i in range(5):
        xv = x0 + (x1 - x0) * i / 4
        yv = y0 + (y1 - y0) * i / 4
        px, _ = to_px(xv, y0)
        _, py = to_px(x0, yv)
        draw.line([px, height - bottom, px, height - bottom + 4], fill="black")
        draw.text((px - 12, height - bottom + 8), f"{xv:.0f}", fill="black")
        draw.line([left - 4, py, left, py], fill="black")
        draw.text((4, py - 6), f"{yv:.4g}", fill="black")
    for i, (name, (xv, yv)) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        draw.line([to_px(x, y) for x, y in zip(xv, yv, strict=True)], fill=colour, width=2)
        draw.line(
            [width - right - 190, top + 12 + 16 * i, width - right - 170, top + 12 + 16 * i], fill=colour, width=3
        )
        draw.text((width - right - 165, top + 6 + 16 * i), name, fill="black")
    draw.text((left, 10), title, fill="black")
    draw.text(((width - len(xlabel) * 6) / 2, height - 18), xlabel, fill="black")
    draw.text((4, 20), ylabel, fill="black")
    with atomic_write(path) as tmp:
        img.save(tmp, format="PNG")


def image_grid(rows: list[list[np.ndarray]], labels: list[str], path: Path, zoom: int = 2) -> None:
    """Rows of equally sized uint8 crops, enlarged by pixel repetition, with column labels on top."""
    tile_h, tile_w = rows[0][0].shape[:2]
    th, tw, gap, head = tile_h * zoom, tile_w * zoom, 6, 18
    canvas = Image.new("RGB", (len(labels) * (tw + gap) + gap, len(rows) * (th + gap) + gap + head), "white")
    draw = ImageDraw.Draw(canvas)
    for c, label in enumerate(labels):
        draw.text((gap + c * (tw + gap), 4), label, fill="black")
    for r, row in enumerate(rows):
        for c, crop in enumerate(row):
            big = Image.fromarray(crop).resize((tw, th), Image.Resampling.NEAREST)
            canvas.paste(big, (gap + c * (tw + gap), head + gap + r * (th + gap)))
    with atomic_write(path) as tmp:
        canvas.save(tmp, format="PNG")
