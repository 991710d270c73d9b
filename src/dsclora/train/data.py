"""Training patches: HR folders -> (LR, HR) pairs made with MATLAB bicubic, random aligned crops, flips, rot90.

Reproducibility without shared RNG state: the k-th sample of a run (its *position*, counting across epochs)
is a pure function of ``(seed, k)``: which image (a per-epoch permutation seeded by ``(seed, epoch)``), where
to crop and how to flip (a generator seeded by ``(seed, k)``). So the order does not depend on the number of
worker processes, a resumed run continues at position ``step · batch``, and DDP ranks split every global batch
into disjoint, equal slices whose union is the single-process batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from dsclora.data.benchmark import bicubic_lr, modcrop
from dsclora.data.io import list_images, read_uint8_rgb
from dsclora.errors import DscloraError


def training_images(folders: list[str], min_side: int = 1) -> tuple[list[Path], list[Path]]:
    """(usable HR files, files skipped because a side is below ``min_side``) of the given folders.

    Sizes come from the image headers only; a file Pillow cannot identify is an error naming it.
    """
    files: list[Path] = []
    skipped: list[Path] = []
    for folder in folders:
        root = Path(folder)
        source = root / "HR" if (root / "HR").is_dir() else root
        found = list_images(source) if source.is_dir() else []
        if not found:
            raise DscloraError(f"no training images in {source}")
        for path in found:
            try:
                with Image.open(path) as img:
                    width, height = img.size
            except (OSError, SyntaxError) as exc:
                raise DscloraError(f"training image unreadable: {path} ({exc})") from None
            (files if min(width, height) >= min_side else skipped).append(path)
    if not files:
        raise DscloraError(f"every training image is smaller than {min_side} pixels on a side; lower data.patch")
    return files, skipped


class PatchDataset(Dataset):
    """Indexed by sample position (not image index); see the module docstring."""

    def __init__(
        self, files: list[Path], scale: int, patch: int, seed: int, augment: bool = True, cache: bool = True
    ) -> None:
        self.files = files
        self.scale = scale
        self.patch = patch
        self.seed = seed
        self.augment = augment
        self.cache = cache
        self._memory: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:  # positions are unbounded; this is one epoch
        return len(self.files)

    def image_index(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.files))
        order = np.random.default_rng([self.seed, epoch, 0x5EED]).permutation(len(self.files))
        return int(order[offset])

    def _pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if index in self._memory:
            return self._memory[index]
        path = self.files[index]
        try:
            hr = modcrop(read_uint8_rgb(path), self.scale)
        except DscloraError as exc:
            raise DscloraError(f"training image unreadable: {exc}") from None
        if min(hr.shape[:2]) < self.patch * self.scale:
            raise DscloraError(
                f"training image {path} ({hr.shape[1]}x{hr.shape[0]}) is smaller than the HR patch "
                f"{self.patch * self.scale}; lower data.patch or remove the image"
            )
        lr = bicubic_lr(path, self.scale)
        if self.cache:
            self._memory[index] = (hr, lr)
        return hr, lr

    def __getitem__(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        hr, lr = self._pair(self.image_index(position))
        rng = np.random.default_rng([self.seed, position])
        p, s = self.patch, self.scale
        top = int(rng.integers(0, lr.shape[0] - p + 1))
        left = int(rng.integers(0, lr.shape[1] - p + 1))
        lr_patch = lr[top : top + p, left : left + p]
        hr_patch = hr[top * s : (top + p) * s, left * s : (left + p) * s]
        if self.augment:
            flip, mirror, turns = rng.integers(0, 2), rng.integers(0, 2), int(rng.integers(0, 4))
            lr_patch, hr_patch = (_augment(a, flip, mirror, turns) for a in (lr_patch, hr_patch))
        return _to_tensor(lr_patch), _to_tensor(hr_patch)


def _augment(img: np.ndarray, flip: int, mirror: int, turns: int) -> np.ndarray:
    if flip:
        img = img[::-1]
    if mirror:
        img = img[:, ::-1]
    return np.rot90(img, turns)


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0)


class PositionSampler(Sampler[int]):
    """Yields this rank's sample positions for steps ``start_step .. steps - 1`` of a global batch."""

    def __init__(self, steps: int, global_batch: int, rank: int = 0, world: int = 1, start_step: int = 0) -> None:
        if global_batch % world:
            raise DscloraError(f"data.batch {global_batch} does not split evenly over {world} processes")
        self.steps, self.global_batch, self.rank, self.world = steps, global_batch, rank, world
        self.start_step = start_step
        self.per_rank = global_batch // world

    def __iter__(self) -> Iterator[int]:
        for step in range(self.start_step, self.steps):
            first = step * self.global_batch + self.rank * self.per_rank
            yield from range(first, first + self.per_rank)

    def __len__(self) -> int:
        return (self.steps - self.start_step) * self.per_rank


def default_workers(requested: int) -> int:
    return min(requested, os.cpu_count() or 1)
