"""``dsclora upscale``: files, folders and globs in, upscaled images out, every check made before any work.

Planning (``plan``) happens first and alone: inputs are expanded (``--recursive`` mirrors sub-folders), each
output name is made (``--suffix``, which cannot name another folder), and the plan goes through the one output
policy (``fs.check_outputs``): refused when an output would overwrite an input or another output, or (without
``--overwrite`` / ``--skip-existing``) an existing file. Then the images run through
a pipeline where decoding the next image and encoding the previous result happen in threads while the network
computes (Pillow and zlib release the GIL), so a folder is bound by the model, not by PNG I/O.
"""

from __future__ import annotations

import glob
import os
import sys
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

from dsclora.data.images import (
    IMAGE_SUFFIXES,
    ImageInfo,
    ImageTooLarge,
    LoadedImage,
    NotAnImage,
    list_images,
    not_regular_file,
    read_image,
    to_array,
    to_tensor,
    verify_image,
    write_image,
)
from dsclora.data.imresize import imresize
from dsclora.data.video import media_without_video
from dsclora.devices import available_memory
from dsclora.errors import DscloraError
from dsclora.fs import NoSpaceError, check_outputs, unreadable
from dsclora.measure.profiling import probe_peak_per_pixel
from dsclora.models.descriptor import ModelDescriptor
from dsclora.runtime.tiling import NonFiniteOutput, TiledUpscaler

Existing = Literal["refuse", "overwrite", "skip"]
# Peak memory of an untiled forward over the tensor bytes ``measure.profiling.forward_peak_bytes`` tracks (it does
# not see oneDNN's reorders and scratch or the allocator's slack). ``benchmarks/forward_memory.py`` (2 threads of
# an AMD EPYC family 25 model 17): the peak RSS rise of one forward was 0.58-1.69x the tracked peak of a 64x64
# probe over SPAN-tiny (960x540), HAESR and CRAFT (240x136) on four CPU paths. (The sum of conv outputs, used
# before, overestimated CRAFT ten times: it tiled a 480x270 image into 64-pixel tiles, five times the work.)
PEAK_MARGIN = 2.0
# Bytes per output value (pixel x channel) while an image is assembled and written: the float32 output, then
# the encoder's float32 scaled copy and its uint8 (or uint16) result (``images.to_uint8``), alive together.
OUTPUT_BYTES_PER_VALUE = 4 + 4 + 2


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
        elif not_regular_file(path):  # a FIFO or a device: never opened (a FIFO would block the reader)
            raise DscloraError(not_regular_file(path))
        else:
            matches = sorted(Path(m) for m in glob.glob(item, recursive=recursive) if Path(m).is_file())
            if not matches:
                raise DscloraError(unreadable(path) or f"no such file: {item}")
            found.extend((m, Path(m.name)) for m in matches)
    unique = dict(found)
    return list(unique.items()), ignored


def check_suffix(suffix: str) -> None:
    """``--suffix`` stays in the file name: it cannot lead an output into another folder."""
    if any(bad in suffix for bad in ("/", os.sep, os.altsep or "/", "..", "\0")):
        raise DscloraError(f"--suffix {suffix!r}: a suffix stays in the file name (no '/', '..' or NUL)")


def name_limit(folder: Path) -> int:
    """The longest file name (bytes) the file system under ``folder`` (or its nearest existing ancestor) takes:
    ``PC_NAME_MAX`` where the system says, else 255 (ext4, XFS, btrfs, APFS, NTFS in UTF-16 units)."""
    existing = next((p for p in (folder, *folder.parents) if p.is_dir()), Path("."))
    try:
        return os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def check_name_lengths(outputs: Sequence[Path], option: str = "--suffix") -> None:
    """Refuse, before any work, an output whose file name the file system cannot hold (found only when the
    finished result is written, otherwise). The name counted is the longer one ``fs.atomic_write`` writes under
    first: ``.NAME.XXXXXXXX.tmpSUFFIX``."""
    for dst in outputs:
        size = len(os.fsencode(f".{dst.name}.XXXXXXXX.tmp{dst.suffix}"))
        limit = name_limit(dst.parent)
        if size > limit:
            raise DscloraError(
                f"output name {dst.name[:40]}... is too long: {size} bytes with its temporary form, over the "
                f"{limit} the file system under {dst.parent} allows for a file name; shorten {option} (or the "
                "input's name)"
            )


def plan(
    inputs: Sequence[str],
    outdir: Path,
    ext: str,
    suffix: str = "",
    recursive: bool = False,
    existing: Existing = "refuse",
    also_read: Sequence[Path] = (),
) -> Plan:
    """Every output path, checked by the one output policy (``fs.check_outputs``): never an input (an image, or
    what ``also_read`` names: the weights and their card), never two inputs on one output, existing files as
    asked."""
    check_suffix(suffix)
    files, ignored = expand_inputs(inputs, recursive)
    jobs = [(src, outdir / rel.parent / f"{rel.stem}{suffix}{ext}") for src, rel in files]
    check_name_lengths([dst for _, dst in jobs])
    check_outputs(
        "upscale",
        [dst for _, dst in jobs],
        [*(src for src, _ in jobs), *also_read],
        overwrite=existing != "refuse",
        input_hint="choose another -o or add --suffix (e.g. --suffix _x4)",
        exists_hint="add --overwrite to replace it or --skip-existing to keep it",
    )
    result = Plan([], ignored_in_subfolders=ignored)
    for job in jobs:
        if existing == "skip" and os.path.lexists(job[1]):
            result.skipped_existing.append(job[1])
        else:
            result.jobs.append(job)
    return result


def verify_inputs(jobs: list[tuple[Path, Path]], max_pixels: int) -> list[ImageInfo]:
    """Every input decoded once before the model loads (``images.verify_image``: milliseconds per megapixel,
    against seconds for the network), so a truncated, empty, oversized or non-image file stops the run before
    any output is written; the error names the first such file and counts the others. Also refused here: a
    colour image for a ``.pgm`` output (PGM holds gray only). Several frames are noted: only the first is used.
    """
    infos: list[ImageInfo] = []
    problems: list[str] = []
    for src, dst in jobs:
        try:
            info = verify_image(src, max_pixels)
        except ImageTooLarge as exc:
            problems.append(f"{exc} (--max-pixels raises it)")
            continue
        except NotAnImage as exc:
            problems.append(media_without_video(src) or str(exc))
            continue
        except DscloraError as exc:
            problems.append(str(exc))
            continue
        if dst.suffix == ".pgm" and not info.grayscale:
            problems.append(f"--ext pgm holds grayscale images only and {src} is colour (use --ext ppm or png)")
        infos.append(info)
    if problems:
        more = f" (and {len(problems) - 1} more unusable input(s))" if len(problems) > 1 else ""
        raise DscloraError(problems[0] + more)
    animated = [(src, info.frames) for (src, _), info in zip(jobs, infos, strict=True) if info.frames > 1]
    if animated:
        src, frames = animated[0]
        print(
            f"note: {len(animated)} input(s) have several frames (e.g. {src.name}: {frames}); "
            "only the first frame of each is upscaled",
            file=sys.stderr,
        )
    return infos


def forward_bytes_per_pixel(described: ModelDescriptor) -> float:
    """Estimated peak bytes per LR pixel of one untiled forward: ``PEAK_MARGIN`` times the tensor peak of a probe
    forward (``measure.profiling.probe_peak_per_pixel``, output included). A network whose memory grows faster
    than its pixels (attention over the whole image) would need more at larger sizes."""
    return PEAK_MARGIN * probe_peak_per_pixel(described)


def check_forward_memory(height: int, width: int, bytes_per_pixel: float, device: torch.device, option: str) -> None:
    """Refuse, before any allocation, one forward of a ``height`` x ``width`` input that would need more memory
    than ``device`` has available (an out-of-memory kill, or a multi-minute swap storm, otherwise)."""
    need = height * width * bytes_per_pixel
    available = available_memory(device)
    if available is not None and need > available:
        raise DscloraError(
            f"{option} {height}x{width}: one forward would need about {need / 2**30:.1f} GiB, more than the "
            f"{available / 2**30:.1f} GiB available on {device}; use a smaller size"
        )


def _size(size: float) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"


def check_output_memory(
    jobs: Sequence[tuple[Path, Path]], sizes: Sequence[tuple[int, int]], scale: int, device: torch.device
) -> None:
    """Refuse, before any forward, an image whose upscaled result cannot be held in memory: tiling bounds the
    network's memory, not the assembled output's (``OUTPUT_BYTES_PER_VALUE`` per value in host memory, and the
    float32 output itself on an accelerator)."""
    if not sizes:
        return
    (src, _), (h, w) = max(zip(jobs, sizes, strict=True), key=lambda job: job[1][0] * job[1][1])
    values = h * w * scale * scale * 3
    needs = [(torch.device("cpu"), values * OUTPUT_BYTES_PER_VALUE)]
    if device.type != "cpu":
        needs.append((device, values * 4))
    for where, need in needs:
        available = available_memory(where)
        if available is not None and need > available:
            raise DscloraError(
                f"{src}: its x{scale} output ({w * scale}x{h * scale}) needs about {_size(need)} of memory on "
                f"{where} to assemble and write, more than the {_size(available)} available; "
                "free memory, or downscale or crop the image first"
            )


def auto_tile(sizes: Sequence[tuple[int, int]], bytes_per_pixel: float, overlap: int, budget_bytes: int) -> int:
    """0 when the largest image fits ``budget_bytes`` untiled, else the largest multiple of 64 whose windows fit."""
    per_pixel = bytes_per_pixel
    largest = max((h * w for h, w in sizes), default=0)
    if largest * per_pixel <= budget_bytes:
        return 0
    side = int((budget_bytes / per_pixel) ** 0.5) - 2 * overlap
    return max(64, side // 64 * 64)


def upscale_image(upscaler: TiledUpscaler, image: LoadedImage, device: torch.device) -> LoadedImage:
    """Super-resolve one loaded image; alpha (if any) follows by MATLAB bicubic, the kind and depth are kept."""
    with torch.inference_mode():  # the output is an inference tensor: clamped in place, no second copy
        rgb = to_array(upscaler(to_tensor(image.rgb).to(device)).clamp_(0, 1))
    alpha = None
    if image.alpha is not None:
        alpha = np.clip(imresize(image.alpha.astype(np.float64), float(upscaler.scale)), 0, 1).astype(np.float32)
    return LoadedImage(rgb, alpha=alpha, grayscale=image.grayscale, bits=image.bits)


def run(
    jobs: list[tuple[Path, Path]], upscaler: TiledUpscaler, device: torch.device, max_pixels: int, progress: bool
) -> int:
    """Upscale every (input, output) pair; per-image errors are reported and counted, the rest goes on (only a
    file changed since ``verify_inputs`` can fail here). A full disk stops the run: nothing else would fit."""
    failures = 0

    def report(exc: DscloraError) -> int:
        if isinstance(exc, NoSpaceError):
            raise exc
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
        for i, (src, dst) in enumerate(bar):
            current = pending_read
            if i + 1 < len(jobs):
                pending_read = io_pool.submit(read_image, jobs[i + 1][0], max_pixels)
            try:
                result = upscale_image(upscaler, current.result(), device)
            except NonFiniteOutput as exc:
                failures += report(DscloraError(f"{exc} for {src}; no output written"))
                continue
            except DscloraError as exc:
                failures += report(exc)
                continue
            writes.append(io_pool.submit(write_image, dst, result))
            if len(writes) > 2:  # bounded: at most two results wait for the encoder
                failures += finish(writes.popleft())
        failures += sum(finish(w) for w in writes)
    return failures
