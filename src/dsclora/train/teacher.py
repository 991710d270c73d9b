"""Teacher targets computed once per training image and kept on disk.

With ``loss.teacher_targets: cached`` the teacher (and its x8 self-ensemble) runs once over each *whole* LR
training image; its SR output is stored and then cropped with exactly the geometry of every LR patch
(``data.patches``), flips and rotations included. So a step pays no teacher forward (a step with λ3 = 0 costs
what a plain ConvLoRA step costs), and the target has no patch-border effects: SPAN's receptive radius is 21 LR
pixels, so a teacher run on a 48x48 patch is wrong near the patch's edges.

Cache layout: ``<cache>/teacher/<key>/<image>.npz`` where ``key`` hashes the teacher's identity (its weights and
code: ``ModelDescriptor.identity``), the ensemble size and the scale, and ``image`` hashes the LR pixels (so renaming or moving files costs nothing, and
a changed image or teacher can never be served a stale target). Each entry holds the SR as float16 (H·s, W·s, 3)
(within 2.5e-4 of fp32 on [0, 1], ~0.06 grey levels) and the sha256 of those bytes; an entry that fails to
load or to match its digest is rebuilt, never used. Entries are written atomically one by one, so an
interrupted build resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from dsclora.data.images import to_array, to_tensor
from dsclora.fs import atomic_write, user_cache_dir
from dsclora.models.ensemble import SelfEnsemble

FORMAT = "teacher-targets/2"


def cache_key(identity: str, ensemble: int, scale: int) -> str:
    """The folder name of one teacher's targets: changes with its weights or code, ensemble size or scale."""
    return hashlib.sha256(f"{FORMAT}|{identity}|x{ensemble}|s{scale}".encode()).hexdigest()[:24]


def image_key(lr: np.ndarray) -> str:
    """Content hash of an LR image (shape and pixels)."""
    digest = hashlib.sha256(f"{lr.shape}|{lr.dtype}".encode())
    digest.update(np.ascontiguousarray(lr).tobytes())
    return digest.hexdigest()[:32]


class TeacherTargets:
    """The cached SR outputs of one teacher (with its self-ensemble) at one scale; ``teacher`` maps [0, 1] images
    to [0, 1] images (a descriptor's ``runnable()``) and ``identity`` is what its outputs depend on."""

    def __init__(self, teacher: nn.Module, identity: str, ensemble: int, scale: int, root: Path | None = None) -> None:
        self.model = SelfEnsemble(teacher, ensemble).eval()
        self.scale = scale
        self.folder = (root or user_cache_dir("teacher")) / cache_key(identity, ensemble, scale)

    def path(self, lr: np.ndarray) -> Path:
        return self.folder / f"{image_key(lr)}.npz"

    @torch.inference_mode()
    def compute(self, lr: np.ndarray) -> np.ndarray:
        """The teacher's SR of a whole uint8 LR image, (H·s, W·s, 3) float16."""
        device = next(self.model.parameters()).device
        return to_array(self.model(to_tensor(lr).to(device))).astype(np.float16)

    def read(self, lr: np.ndarray) -> np.ndarray | None:
        """A verified entry for ``lr``, or None if there is none or it is damaged (a warning says which)."""
        path = self.path(lr)
        if not path.is_file():
            return None
        expected = (lr.shape[0] * self.scale, lr.shape[1] * self.scale, 3)
        try:
            with np.load(path) as entry:
                sr, digest = entry["sr"], bytes(entry["sha256"])
            intact = sr.dtype == np.float16 and sr.shape == expected and hashlib.sha256(sr.tobytes()).digest() == digest
        except Exception:  # truncated zip, garbage bytes, missing member: all mean "rebuild"
            intact = False
        if not intact:
            warnings.warn(f"teacher target {path.name} is damaged; computing it again", stacklevel=2)
            return None
        return sr

    def write(self, lr: np.ndarray, sr: np.ndarray) -> None:
        digest = np.frombuffer(hashlib.sha256(sr.tobytes()).digest(), dtype=np.uint8)
        with atomic_write(self.path(lr)) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, sr=sr, sha256=digest)

    def get(self, lr: np.ndarray) -> np.ndarray:
        """The target of one LR image: from the cache, or computed and stored."""
        sr = self.read(lr)
        if sr is None:
            sr = self.compute(lr)
            self.write(lr, sr)
        return sr

    def get_all(self, images: list[np.ndarray], progress: bool = True) -> list[np.ndarray]:
        """Targets of every image in order, building missing ones with a progress bar."""
        bar = tqdm(images, desc="teacher targets", unit="img", disable=not progress, dynamic_ncols=True)
        return [self.get(lr) for lr in bar]
