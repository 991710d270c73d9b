"""``dsclora upscale``: files, folders and globs in, upscaled images out, every check made before any work.

Planning (``plan``) happens first and alone: inputs are expanded (``--recursive`` mirrors sub-folders), each
output name is made (``--suffix``), and the plan is refused when an output would overwrite an input or
another output, or (without ``--overwrite`` / ``--skip-existing``) an existing file. Then the images run through
a pipeline where decoding the next image and encoding the previous result happen in threads while the network
computes (Pillow and zlib release the GIL), so a folder is bound by the model, not by PNG I/O.
"""

from __future__ import annotations

import glob
import sys
from collections import Counter, deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

from dsclora.data.images import IMAGE_SUFFIXES, LoadedImage, list_images, read_image, to_array, to_tensor, write_image
from dsclora.data.imresize import imresize
from dsclora.errors import DscloraError
from dsclora.runtime.tiling import TiledUpscaler

Existing = Literal["refuse", "overwrite", "skip"]
# Peak memory of an untiled eager forward per conv activation (conv output value) of the network: measured with
# benchmarks/infer.py's memory pass for SPAN-tiny (1.3-2.9 kB per LR pixel, 594 conv activations per LR pixel,
# depending on the path), so ~5 bytes each with the float32 output on top.
BYTES_PER_ACTIVATION = 5


@dataclass
class Plan:
    """What an upscale run will read and write, decided before anything is computed."""

    jobs: list[tuple[Path, Path]]  # (input, output)
    skipped_existing: list[Path] = field(default_factory=list)
    ignored_in_subfolders: int = 0  # images below a folder input, not taken without --recursive


def expand_inputs(inputs: Sequence[str], recursive: bool = False) -> tuple[list[tuple[Path, Path]], int]:
    """([(file, path relative to the output folder)], images left in sub-folders); duplicates dropped."""
    found: list[tuple[Path, Path]] = []
    ignored = 0
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            nested = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            nested = [p for p in nested if not any(part.startswith(".") for part in p.relative_to(path).parts)]
            direct = list_images(path)
            files = nested if recursive else direct
            ignored += 0 if recursive else len(nested) - len(direct)
            if not files:
                raise DscloraError(f"no images in folder {path}" + ("" if recursive else " (--recursive looks deeper)"))
            found.extend((f, f.relative_to(path)) for f in files)
        elif path.is_file():
            found.append((path, Path(path.name)))
        else:
            matches = sorted(Path(m) for m in glob.glob(item, recursive=recursive) if Path(m).is_file())
            if not matches:
                raise DscloraError(f"no such file: {item}")
            found.extend((m, Path(m.name)) for m in matches)
    unique = dict(found)
    return list(unique.items()), ignored


def plan(
    inputs: Sequence[str],
    outdir: Path,
    ext: str,
    suffix: str = "",
    recursive: bool = False,
    existing: Existing = "refuse",
) -> Plan:
    """Every output path, checked: never an input, never two inputs on one output, existing files as asked."""
    files, ignored = expand_inputs(inputs, recursive)
    jobs = [(src, outdir / rel.parent / f"{rel.stem}{suffix}{ext}") for src, rel in files]
    sources = {src.resolve() for src, _ in jobs}
    for _, dst in jobs:
        if dst.resolve() in sources:
            raise DscloraError(
                f"{dst} would overwrite an input image; choose another -o or add --suffix (e.g. --suffix _x4)"
            )
    clashes = [t for t, n in Counter(dst for _, dst in jobs).items() if n > 1]
    if clashes:
        raise DscloraError(f"several inputs would write {sorted(clashes)[0]}; rename them or use separate runs")
    result = Plan([], ignored_in_subfolders=ignored)
    for job in jobs:
        dst = job[1]
        if dst.is_dir():
            raise DscloraError(f"output {dst} is a folder")
        if dst.exists() and existing == "refuse":
            raise DscloraError(f"{dst} exists; add --overwrite to replace it or --skip-existing to keep it")
        if dst.exists() and existing == "skip":
            result.skipped_existing.append(dst)
        else:
            result.jobs.append(job)
    return result


def auto_tile(
    sizes: Sequence[tuple[int, int]], activations_per_pixel: float, scale: int, overlap: int, budget_bytes: int
) -> int:
    """0 when the largest image fits ``budget_bytes`` untiled, else the largest multiple of 64 whose windows fit.

    ``activations_per_pixel``: the network's conv outputs per LR pixel (``measure.profiling.conv_statistics``).
    """
    per_pixel = BYTES_PER_ACTIVATION * activations_per_pixel + 4 * 3 * scale * scale * 2
    largest = max((h * w for h, w in sizes), default=0)
    if largest * per_pixel <= budget_bytes:
        return 0
    side = int((budget_bytes / per_pixel) ** 0.5) - 2 * overlap
    return max(64, side // 64 * 64)


def upscale_image(upscaler: TiledUpscaler, image: LoadedImage, device: torch.device) -> LoadedImage:
    """Super-resolve one loaded image; alpha (if any) follows by MATLAB bicubic, the kind and depth are kept."""
    rgb = np.clip(to_array(upscaler(to_tensor(image.rgb).to(device))), 0, 1)
    alpha = None
    if image.alpha is not None:
        alpha = np.clip(imresize(image.alpha.astype(np.float64), float(upscaler.scale)), 0, 1).astype(np.float32)
    return LoadedImage(rgb, alpha=alpha, grayscale=image.grayscale, bits=image.bits)


def run(
    jobs: list[tuple[Path, Path]], upscaler: TiledUpscaler, device: torch.device, max_pixels: int, progress: bool
) -> int:
    """Upscale every (input, output) pair; per-image errors are reported and counted, the rest goes on."""
    failures = 0

    def report(exc: DscloraError) -> int:
        print(f"dsclora: error: {exc}", file=sys.stderr)
        return 1

    def finish(write: Future) -> int:
        try:
            write.result()
            return 0
        except DscloraError as exc:
            return report(exc)

    with ThreadPoolExecutor(max_workers=2) as io_pool:
        pending_read = io_pool.submit(read_image, jobs[0][0], max_pixels)
        writes: deque[Future] = deque()
        bar = tqdm(jobs, desc="upscale", unit="img", disable=not progress, dynamic_ncols=True)
        for i, (_, dst) in enumerate(bar):
            current = pending_read
            if i + 1 < len(jobs):
                pending_read = io_pool.submit(read_image, jobs[i + 1][0], max_pixels)
            try:
                result = upscale_image(upscaler, current.result(), device)
            except DscloraError as exc:
                failures += report(exc)
                continue
            writes.append(io_pool.submit(write_image, dst, result))
            if len(writes) > 2:  # bounded: at most two results wait for the encoder
                failures += finish(writes.popleft())
        failures += sum(finish(w) for w in writes)
    return failures
