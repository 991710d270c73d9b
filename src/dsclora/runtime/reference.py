"""How close a reduced-precision runner stays to fp32, on reference images shipped in the package.

``--precision auto`` may choose a precision only where, on these images, it is as good as fp32 for every
purpose we publish: the mean Y-PSNR change against the ground truth within ``MAX_DB_CHANGE`` either way (the
figure evaluations report, so a reduced precision never shifts one by more than that), and no output value
further than ``MAX_ABS_CHANGE`` from fp32's (a mean can hide a local failure: an overflow, a broken border).

The images (``assets/reference``, four 192x192 crops of public-domain / CC0 photos from scikit-image, see their
README) are the HR ground truth; LR inputs are made with MATLAB bicubic at the network's scale, as the test sets'
are. Measured (``benchmarks/infer.py`` and the session notes of this change): on them plain bf16 autocast moves
Y-PSNR by -0.02 to -0.035 dB and single values by 6-12 grey levels across four SPAN variants; SPAN's
bf16-accurate form stays within ±0.003 dB and 4 grey levels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dsclora.data.benchmark import modcrop
from dsclora.data.images import read_uint8_rgb, to_array, to_tensor, to_uint8
from dsclora.data.imresize import imresize
from dsclora.measure.metrics import psnr_y

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "assets" / "reference"
MAX_DB_CHANGE = 0.005  # the bound, and the floor below which the project reports no difference
MAX_ABS_CHANGE = 8 / 255  # twice the worst value bf16-accurate showed on these images (any SPAN measured)


@dataclass(frozen=True)
class Accuracy:
    """A runner against fp32 on the reference images: mean Y-PSNR change (dB) and largest value change."""

    db_change: float
    max_abs: float

    @property
    def ok(self) -> bool:
        return abs(self.db_change) <= MAX_DB_CHANGE and self.max_abs <= MAX_ABS_CHANGE

    def describe(self) -> str:
        if not np.isfinite(self.max_abs):
            return "NaN / Inf in the output"
        return f"{self.db_change:+.4f} dB, max |Δ| {self.max_abs * 255:.1f}/255"


def reference_pairs(scale: int) -> list[tuple[np.ndarray, torch.Tensor]]:
    """(HR uint8 image, LR tensor) for every reference image, HR mod-cropped to ``scale``."""
    pairs = []
    for path in sorted(REFERENCE_DIR.glob("*.png")):
        hr = modcrop(read_uint8_rgb(path), scale)
        pairs.append((hr, to_tensor(imresize(hr, 1.0 / scale))))
    return pairs


@torch.inference_mode()
def accuracy(
    runner: Callable[[torch.Tensor], torch.Tensor],
    reference: Callable[[torch.Tensor], torch.Tensor],
    scale: int,
    device: torch.device,
) -> Accuracy:
    """``runner`` against ``reference`` (the same network in fp32) on the reference images (RGB networks)."""
    changes, worst = [], 0.0
    for hr, lr in reference_pairs(scale):
        got = runner(lr.to(device)).float().clamp(0, 1).cpu()
        want = reference(lr.to(device)).float().clamp(0, 1).cpu()
        if not (torch.isfinite(got).all() and torch.isfinite(want).all()):  # never within any bound
            return Accuracy(float("nan"), float("inf"))
        worst = max(worst, (got - want).abs().max().item())
        changes.append(psnr_y(to_uint8(to_array(got)), hr, scale) - psnr_y(to_uint8(to_array(want)), hr, scale))
    return Accuracy(float(np.mean(changes)), worst)
