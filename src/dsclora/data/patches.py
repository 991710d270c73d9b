"""Training patches: image folders -> aligned (LR, HR, teacher target) crops with flips and 90° rotations.

Two kinds of training image: HR files (LR made with MATLAB bicubic, ``benchmark.bicubic_lr``) and LR files
used as they are (unlabelled photos for recipes whose target is a teacher's output). A teacher target, when a
recipe caches one (``train.teacher``), is the teacher's SR of the whole LR image; it is cropped and turned
with exactly the patch's geometry, as HR is.

Reproducibility without shared RNG state: the k-th sample of a run (its *position*, counting across epochs)
is a pure function of ``(seed, k)``: which image (a per-epoch permutation seeded by ``(seed, epoch)``), where
to crop and how to flip (a generator seeded by ``(seed, k)``). So the order does not depend on the number of
worker processes, a resumed run continues at position ``step · batch``, and DDP ranks split every global batch
into disjoint, equal slices whose union is the single-process batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from dsclora.data.benchmark import bicubic_lr, modcrop
from dsclora.data.images import list_images, read_uint8_rgb, to_tensor
from dsclora.errors import DscloraError


@dataclass(frozen=True)
class TrainImage:
    """One training image: an HR file (LR made from it) or, with ``has_hr=False``, an LR file used as is."""

    path: Path
    has_hr: bool = True


def _image_files(folder: str) -> list[Path]:
    root = Path(folder)
    source = root / "HR" if (root / "HR").is_dir() else root
    found = list_images(source) if source.is_dir() else []
    if not found:
        raise DscloraError(f"no training images in {source}")
    return found


def _size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DscloraError(f"training image unreadable: {path} ({exc})") from None


def training_images(
    hr_folders: Sequence[str], lr_folders: Sequence[str], patch: int, scale: int
) -> tuple[list[TrainImage], list[Path]]:
    """(usable images, files skipped because they cannot hold a ``patch``-sized LR crop).

    Sizes come from the image headers only; a file Pillow cannot identify is an error naming it. An HR image
    needs ``patch · scale`` pixels a side: its LR image is ``floor(side / scale)`` pixels (the mod-crop takes
    ``side mod scale``), which holds a ``patch``-pixel crop exactly when ``side >= patch · scale``.
    """
    images: list[TrainImage] = []
    skipped: list[Path] = []
    for folders, has_hr, need in ((hr_folders, True, patch * scale), (lr_folders, False, patch)):
        for folder in folders:
            for path in _image_files(folder):
                if min(_size(path)) >= need:
                    images.append(TrainImage(path, has_hr))
                else:
                    skipped.append(path)
    if not images:
        raise DscloraError(
            f"every training image is too small for data.patch {patch}: an LR patch of {patch} pixels needs HR "
            f"images of at least patch x scale = {patch * scale} pixels a side (LR-only images: {patch}); "
            "lower data.patch"
        )
    return images, skipped


class PatchDataset(Dataset):
    """Indexed by sample position (not image index); see the module docstring.

    Each sample is a dict: ``lr`` always, ``hr`` when ``with_hr``, ``target`` when teacher targets are set
    (``set_targets``), as float32 (C, h, w) tensors in [0, 1].
    """

    def __init__(
        self,
        images: list[TrainImage],
        scale: int,
        patch: int,
        seed: int,
        augment: bool = True,
        cache: bool = True,
        with_hr: bool = True,
    ) -> None:
        if with_hr and not all(image.has_hr for image in images):
            raise DscloraError("LR-only training images have no HR patch to give")
        self.images = images
        self.scale = scale
        self.patch = patch
        self.seed = seed
        self.augment = augment
        self.cache = cache
        self.with_hr = with_hr
        self.targets: list[np.ndarray] | None = None
        self._memory: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}

    def __len__(self) -> int:  # positions are unbounded; this is one epoch
        return len(self.images)

    def set_targets(self, targets: list[np.ndarray]) -> None:
        """Teacher SR outputs of every image (H·scale, W·scale, 3), in ``images`` order."""
        if len(targets) != len(self.images):
            raise ValueError(f"{len(targets)} teacher targets for {len(self.images)} images")
        self.targets = targets

    def image_index(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.images))
        order = np.random.default_rng([self.seed, epoch, 0x5EED]).permutation(len(self.images))
        return int(order[offset])

    def lr_image(self, index: int) -> np.ndarray:
        """The whole LR image (uint8 H, W, 3) of training image ``index``, as patches are cut from it."""
        return self._load(index)[0]

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(LR, HR mod-cropped or None) of image ``index``, uint8."""
        if index in self._memory:
            return self._memory[index]
        image = self.images[index]
        try:
            if image.has_hr:
                lr = bicubic_lr(image.path, self.scale)
                hr = modcrop(read_uint8_rgb(image.path), self.scale) if self.with_hr else None
            else:
                lr, hr = read_uint8_rgb(image.path), None
        except DscloraError as exc:
            raise DscloraError(f"training image unreadable: {exc}") from None
        if min(lr.shape[:2]) < self.patch:
            raise DscloraError(
                f"training image {image.path} gives a {lr.shape[1]}x{lr.shape[0]} LR image, smaller than the "
                f"{self.patch}-pixel patch; lower data.patch or remove the image"
            )
        pair = (lr, hr)
        if self.cache:
            self._memory[index] = pair
        return pair

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        index = self.image_index(position)
        lr, hr = self._load(index)
        rng = np.random.default_rng([self.seed, position])
        p, s = self.patch, self.scale
        top = int(rng.integers(0, lr.shape[0] - p + 1))
        left = int(rng.integers(0, lr.shape[1] - p + 1))
        crops = {"lr": lr[top : top + p, left : left + p]}
        hr_window = (slice(top * s, (top + p) * s), slice(left * s, (left + p) * s))
        if hr is not None:
            crops["hr"] = hr[hr_window]
        if self.targets is not None:
            crops["target"] = self.targets[index][hr_window]
        if self.augment:
            flip, mirror, turns = rng.integers(0, 2), rng.integers(0, 2), int(rng.integers(0, 4))
            crops = {k: augment(v, flip, mirror, turns) for k, v in crops.items()}
        return {k: to_tensor(v)[0] for k, v in crops.items()}


def augment(img: np.ndarray, flip: int, mirror: int, turns: int) -> np.ndarray:
    """Flip (rows) and mirror (columns), then rotate by ``turns`` quarter turns: the 8 symmetries of a patch."""
    if flip:
        img = img[::-1]
    if mirror:
        img = img[:, ::-1]
    return np.rot90(img, turns)


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
