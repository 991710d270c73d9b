"""Dependency-free PNG line charts (Pillow only) for the results report."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw

from dsclora.fs import atomic_write

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def nice_ticks(low: float, high: float, most: int = 6) -> tuple[list[float], int]:
    """Round tick values (1, 2 or 5 times a power of ten apart) covering [low, high], and the decimals they need."""
    raw = (high - low) / most or abs(high) or 1.0
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if step * m >= raw)
    first = math.ceil(low / step)
    ticks = [k * step for k in range(first, math.floor(high / step) + 1)]
    return ticks, max(0, -math.floor(math.log10(step)))


def line_chart(
    series: dict[str, tuple[list[float], list[float]]],
    path: Path,
    title: str,
    xlabel: str,
    ylabel: str,
    size: tuple[int, int] = (760, 440),
) -> None:
    """One line per series (x values, y values), linear axes with round ticks, legend top right."""
    width, height = size
    left, right, top, bottom = 70, 20, 44, 50
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
    xticks, xdigits = nice_ticks(x0, x1)
    for xv in xticks:
        px, _ = to_px(xv, y0)
        draw.line([px, height - bottom, px, height - bottom + 4], fill="black")
        draw.text((px - 12, height - bottom + 8), f"{xv:.{xdigits}f}", fill="black")
    yticks, ydigits = nice_ticks(y0, y1)
    for yv in yticks:
        _, py = to_px(x0, yv)
        draw.line([left - 4, py, left, py], fill="black")
        draw.text((4, py - 6), f"{yv:.{ydigits}f}", fill="black")
    for i, (name, (xv, yv)) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        draw.line([to_px(x, y) for x, y in zip(xv, yv, strict=True)], fill=colour, width=2)
        draw.line(
            [width - right - 190, top + 12 + 16 * i, width - right - 170, top + 12 + 16 * i], fill=colour, width=3
        )
        draw.text((width - right - 165, top + 6 + 16 * i), name, fill="black")
    draw.text((left, 8), title, fill="black")
    draw.text(((width - len(xlabel) * 6) / 2, height - 18), xlabel, fill="black")
    draw.text((4, 26), ylabel, fill="black")
    with atomic_write(path) as tmp:
        img.save(tmp, format="PNG")
