"""Benchmark folders: find HR/LR pairs in the common layouts, or make LR with MATLAB bicubic and cache it.

Layouts recognised for ``root`` and scale ``s`` (first match wins):
1. ``root/x{s}/HR`` + ``root/x{s}/LR`` (this project's shared data, SelfExSR naming)
2. ``root/HR`` + ``root/LR_bicubic/X{s}`` with ``{stem}x{s}.png`` or the HR name (BasicSR / SwinIR)
3. ``root/HR`` + ``root/LR`` (same names)
4. the NTIRE ESR kit's ``<name>_HR/NNNN.png`` + ``<name>_LR/NNNNx{s}.png`` (e.g. DIV2K_LSDIR_valid): ``root``
   holding one such pair of folders, or ``root`` being the ``_HR`` folder itself
5. ``root/HR`` alone, or images directly in ``root``: LR = MATLAB ``imresize(modcrop(HR), 1/s)``, cached as
   PNG under the user cache so later runs read it back.
HR is always mod-cropped to ``s`` (top-left kept), as the literature does.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dsclora.data.images import list_images, read_uint8_rgb
from dsclora.data.imresize import imresize
from dsclora.errors import DscloraError
from dsclora.fs import NoSpaceError, atomic_write, user_cache_dir


@dataclass(frozen=True)
class Pair:
    name: str
    hr: Path
    lr: Path | None  # None: made from HR on demand


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def _match_lr(hr_files: list[Path], lr_dir: Path, scale: int) -> list[Pair]:
    pairs = []
    for hr in hr_files:
        options = [lr_dir / hr.name, lr_dir / f"{hr.stem}x{scale}{hr.suffix}", lr_dir / f"{hr.stem}x{scale}.png"]
        lr = next((p for p in options if p.is_file()), None)
        if lr is None:
            raise DscloraError(f"no LR image for {hr.name} in {lr_dir}")
        pairs.append(Pair(hr.stem, hr, lr))
    return pairs


def _ntire_folders(root: Path) -> tuple[Path, Path] | None:
    """(``<name>_HR``, ``<name>_LR``) for the NTIRE kit layout, or None."""
    if root.name.endswith("_HR"):
        lr = root.with_name(root.name[: -len("_HR")] + "_LR")
        return (root, lr) if lr.is_dir() else None
    pairs = [(hr, hr.with_name(hr.name[:-3] + "_LR")) for hr in sorted(root.glob("*_HR")) if hr.is_dir()]
    pairs = [(hr, lr) for hr, lr in pairs if lr.is_dir()]
    if len(pairs) > 1:
        names = ", ".join(hr.name[:-3] for hr, _ in pairs)
        raise DscloraError(f"{root} holds several NTIRE-style sets ({names}); give one of <name>_HR folders")
    return pairs[0] if pairs else None


def find_pairs(root: str | os.PathLike, scale: int) -> list[Pair]:
    """The (HR, LR) pairs of a benchmark folder at ``scale``; see the module docstring for layouts."""
    root = Path(root)
    if not root.is_dir():
        raise DscloraError(f"dataset folder not found: {root}")
    layouts = [
        (root / f"x{scale}" / "HR", root / f"x{scale}" / "LR"),
        (root / "HR", root / "LR_bicubic" / f"X{scale}"),
        (root / "HR", root / "LR"),
    ]
    ntire = _ntire_folders(root)
    if ntire is not None:
        layouts.append(ntire)
    for hr_dir, lr_dir in layouts:
        if hr_dir.is_dir() and lr_dir.is_dir():
            return _match_lr(_nonempty(hr_dir), lr_dir, scale)
    other_scales = sorted(p.name for p in [*root.glob("x[0-9]"), *root.glob("LR_bicubic/X[0-9]")] if p.is_dir())
    if other_scales:
        raise DscloraError(
            f"{root} has no x{scale} data: it holds {', '.join(other_scales)} (looked for x{scale}/HR + x{scale}/LR "
            f"and HR + LR_bicubic/X{scale})"
        )
    hr_dir = root / "HR" if (root / "HR").is_dir() else root
    return [Pair(p.stem, p, None) for p in _nonempty(hr_dir)]


def _nonempty(folder: Path) -> list[Path]:
    files = list_images(folder)
    if not files:
        raise DscloraError(
            f"no images in {folder} (layouts looked for: x<S>/HR + x<S>/LR, HR + LR_bicubic/X<S>, HR + LR, "
            "<name>_HR + <name>_LR, or HR images)"
        )
    return files


def lr_cache_dir() -> Path:
    return user_cache_dir("lr")


def bicubic_lr(hr_path: Path, scale: int, cache: Path | None = None) -> np.ndarray:
    """MATLAB-bicubic LR of a mod-cropped HR image, cached by the HR file's path, size and mtime."""
    stat = hr_path.stat()
    key = hashlib.sha1(f"{hr_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|x{scale}".encode()).hexdigest()
    cached = (cache or lr_cache_dir()) / f"{key[:20]}.png"
    if cached.is_file():
        return np.asarray(Image.open(cached).convert("RGB"))
    lr = imresize(modcrop(read_uint8_rgb(hr_path), scale), 1.0 / scale)
    try:
        with atomic_write(cached) as tmp:
            Image.fromarray(lr).save(tmp)
    except (OSError, NoSpaceError):
        pass  # a read-only or full cache only costs time
    return lr


def load_pair(pair: Pair, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """(HR mod-cropped, LR) as uint8 RGB arrays, checked to be consistent in size."""
    hr = modcrop(read_uint8_rgb(pair.hr), scale)
    lr = read_uint8_rgb(pair.lr) if pair.lr is not None else bicubic_lr(pair.hr, scale)
    if (lr.shape[0] * scale, lr.shape[1] * scale) != hr.shape[:2]:
        raise DscloraError(
            f"{pair.name}: LR {lr.shape[1]}x{lr.shape[0]} times {scale} does not give HR {hr.shape[1]}x{hr.shape[0]}"
        )
    return hr, lr
