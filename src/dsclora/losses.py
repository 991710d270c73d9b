"""Losses: pixel reconstruction (L1 / Charbonnier) and spatial feature-affinity distillation.

Spatial affinity (FAKD, He et al., ICIP 2020; used by DSCLoRA, ``paper-notes.md`` §2): flatten a feature map
F (B, C, H, W) to (B, C, N), N = H·W, normalise every spatial position's C-vector to unit L2 norm, and compare
the N x N matrices ``A = F̃ᵀ F̃`` of student and teacher by mean absolute difference. A is second-order
information: how alike every pair of positions is, independent of each position's feature magnitude.

Memory: A has N² entries per image and layer (4096² floats = 64 MiB for a 64x64 LR patch). The loss here is
exact but never holds a whole A: it walks over blocks of ``chunk`` rows, and each block is recomputed in the
backward pass (activation checkpointing), so peak memory is O(B · chunk · N) whatever the patch size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

AFFINITY_EPS = 1e-7


def charbonnier(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    return torch.sqrt((pred - target) ** 2 + eps * eps).mean()


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    if kind == "l1":
        return F.l1_loss(pred, target)
    if kind == "charbonnier":
        return charbonnier(pred, target)
    raise ValueError(f"unknown reconstruction loss {kind!r} (use l1 or charbonnier)")


def normalised_positions(feature: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, N) with each position's channel vector scaled to unit L2 norm."""
    flat = feature.flatten(2)
    if flat.dtype in (torch.float16, torch.bfloat16):  # the N x N products need fp32 accuracy
        flat = flat.float()
    return flat / flat.norm(dim=1, keepdim=True).clamp_min(AFFINITY_EPS)


def _block_l1(student: torch.Tensor, teacher: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    rows_s = student[:, :, start:stop].transpose(1, 2) @ student  # (B, rows, N)
    rows_t = teacher[:, :, start:stop].transpose(1, 2) @ teacher
    return (rows_s - rows_t).abs().sum()


def spatial_affinity_loss(student: torch.Tensor, teacher: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """mean |A_student - A_teacher| over (B, N, N), computed in row blocks of ``chunk`` (exact)."""
    if student.shape[0] != teacher.shape[0] or student.shape[2:] != teacher.shape[2:]:
        raise ValueError(f"feature maps differ in batch or size: {tuple(student.shape)} vs {tuple(teacher.shape)}")
    s = normalised_positions(student)
    t = normalised_positions(teacher).detach()
    batch, _, n = s.shape
    total = s.new_zeros(())
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        if s.requires_grad:
            total = total + checkpoint(_block_l1, s, t, start, stop, use_reentrant=False)
        else:
            total = total + _block_l1(s, t, start, stop)
    return total / (batch * n * n)
