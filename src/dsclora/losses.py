"""Losses: pixel reconstruction (L1 / Charbonnier) and spatial feature-affinity distillation.

Spatial affinity (FAKD, He et al., ICIP 2020; used by DSCLoRA, ``paper-notes.md`` §2): flatten a feature map
F (B, C, H, W) to (B, C, N), N = H·W, normalise every spatial position's C-vector to unit L2 norm, and compare
the N x N matrices ``A = F̃ᵀ F̃`` of student and teacher by mean absolute difference. A is second-order
information: how alike every pair of positions is, independent of each position's feature magnitude.

Memory: A has N² entries per image and layer (4096² floats = 64 MiB for a 64x64 LR patch). The loss here is
exact but never holds a whole A: it walks over blocks of ``chunk`` rows, and each block is recomputed in the
backward pass (a hand-written autograd function), so peak memory is O(B · chunk · N) whatever the patch size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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


class _AffinityL1Sum(torch.autograd.Function):
    """sum |SᵀS - TᵀT| over (B, N, N) for normalised S, T (B, C, N), in row blocks, with a hand-written backward.

    D = SᵀS - TᵀT is symmetric, so the forward only visits blocks on or right of the diagonal (off-diagonal
    ones count twice), and ∂/∂S Σ|D| = 2 · S · sign(D). The backward recomputes each row block of D instead of
    storing it: memory stays O(B · chunk · N), and no N x N matrix is ever whole.
    """

    @staticmethod
    def forward(ctx, s: torch.Tensor, t: torch.Tensor, chunk: int) -> torch.Tensor:
        n = s.shape[2]
        total = s.new_zeros((), dtype=torch.float64)
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            block = _rows(s, t, start, stop, start)  # columns start..N
            diagonal = block[:, :, : stop - start].abs().sum().double()
            total += diagonal + 2 * block[:, :, stop - start :].abs().sum().double()
        ctx.save_for_backward(s, t)
        ctx.chunk = chunk
        return total.to(s.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        s, t = ctx.saved_tensors
        grad_s = torch.zeros_like(s)
        n = s.shape[2]
        for start in range(0, n, ctx.chunk):
            stop = min(start + ctx.chunk, n)
            signs = _rows(s, t, start, stop, start).sign_()  # sign(D) for rows start..stop, columns start..N
            # Block (i, j >= i) feeds column block i through S_j and, by symmetry, column block j through S_i.
            grad_s[:, :, start:stop] += s[:, :, start:] @ signs.transpose(1, 2)
            grad_s[:, :, stop:] += s[:, :, start:stop] @ signs[:, :, stop - start :]
        return grad * 2.0 * grad_s, None, None


def _rows(s: torch.Tensor, t: torch.Tensor, start: int, stop: int, first_col: int) -> torch.Tensor:
    """Rows start..stop, columns first_col..N of D = SᵀS - TᵀT."""
    rows_s = s[:, :, start:stop].transpose(1, 2) @ s[:, :, first_col:]
    return rows_s.sub_(t[:, :, start:stop].transpose(1, 2) @ t[:, :, first_col:])


def spatial_affinity_loss(student: torch.Tensor, teacher: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """mean |A_student - A_teacher| over (B, N, N), computed in row blocks of ``chunk`` (exact)."""
    if student.shape[0] != teacher.shape[0] or student.shape[2:] != teacher.shape[2:]:
        raise ValueError(f"feature maps differ in batch or size: {tuple(student.shape)} vs {tuple(teacher.shape)}")
    s = normalised_positions(student)
    t = normalised_positions(teacher).detach().to(s.dtype)
    batch, _, n = s.shape
    return _AffinityL1Sum.apply(s, t, chunk) / (batch * n * n)
