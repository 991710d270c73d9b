"""Losses: pixel distances (L1 / L2 / Charbonnier) and spatial feature-affinity distillation.

Spatial affinity (FAKD, He et al., ICIP 2020; used by DSCLoRA, ``docs/method.md`` §2): flatten a feature map
F (B, C, H, W) to (B, C, N), N = H·W, normalise every spatial position's C-vector to unit L2 norm, and compare
the N x N matrices ``A = F̃ᵀ F̃`` of student and teacher by mean absolute difference. A is second-order
information: how alike every pair of positions is, independent of each position's feature magnitude.

Two distances between the affinity matrices, both exact:
- ``l1`` (FAKD's): mean |A_s - A_t|. A has N² entries per image and layer (4096² floats = 64 MiB for a 64x64
  LR patch); the loss never holds a whole A: it walks over blocks of ``chunk`` rows, and each block is
  recomputed in the backward pass (a hand-written autograd function), so peak memory is O(B · chunk · N);
  the work stays O(B · N² · C).
- ``l2``: mean (A_s - A_t)². With S, T the normalised (C, N) maps, ‖SᵀS - TᵀT‖² = ‖SSᵀ‖² - 2‖STᵀ‖² + ‖TTᵀ‖²
  needs only C x C products: O(B · N · C²). Written that way it cancels catastrophically when S ≈ T (the
  student starts as its teacher: 4 % error at 1e-3 feature noise in fp32). The same value in a stable form:
  SᵀS - TᵀT = UᵀV with U = [S - T; T], V = [S; S - T] (stacked along channels), so
  ‖SᵀS - TᵀT‖² = ⟨UUᵀ, VVᵀ⟩ with 2C x 2C Gram matrices whose entries do not cancel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dsclora.errors import DscloraError
from dsclora.train.config import LossConfig

AFFINITY_EPS = 1e-7


def charbonnier(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    return torch.sqrt((pred - target) ** 2 + eps * eps).mean()


PIXEL_DISTANCES = ("l1", "l2", "charbonnier")
AFFINITY_DISTANCES = ("l1", "l2")


def pixel_distance(pred: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Mean L1, mean squared error, or Charbonnier between two images (or image batches)."""
    if kind == "l1":
        return F.l1_loss(pred, target)
    if kind == "l2":
        return F.mse_loss(pred, target)
    if kind == "charbonnier":
        return charbonnier(pred, target)
    raise ValueError(f"unknown pixel distance {kind!r} (use {', '.join(PIXEL_DISTANCES)})")


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


def _affinity_l2_sum(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """sum (SᵀS - TᵀT)² over (B, N, N) as ⟨UUᵀ, VVᵀ⟩ (see the module docstring): O(B · N · C²), no cancellation."""
    if s.shape[1] != t.shape[1]:  # stacking needs equal widths; zero channels change no inner product
        width = max(s.shape[1], t.shape[1])
        s, t = (F.pad(m, (0, 0, 0, width - m.shape[1])) for m in (s, t))
    diff = s - t
    u = torch.cat([diff, t], dim=1)
    v = torch.cat([s, diff], dim=1)
    return ((u @ u.transpose(1, 2)) * (v @ v.transpose(1, 2))).sum()


def spatial_affinity_loss(
    student: torch.Tensor, teacher: torch.Tensor, chunk: int = 1024, distance: str = "l1"
) -> torch.Tensor:
    """mean |A_s - A_t| (``l1``, in row blocks of ``chunk``) or mean (A_s - A_t)² (``l2``) over (B, N, N); exact."""
    if student.shape[0] != teacher.shape[0] or student.shape[2:] != teacher.shape[2:]:
        raise ValueError(f"feature maps differ in batch or size: {tuple(student.shape)} vs {tuple(teacher.shape)}")
    s = normalised_positions(student)
    t = normalised_positions(teacher).detach().to(s.dtype)
    batch, _, n = s.shape
    if distance == "l1":
        total = _AffinityL1Sum.apply(s, t, chunk)
    elif distance == "l2":
        total = _affinity_l2_sum(s, t)
    else:
        raise ValueError(f"unknown affinity distance {distance!r} (use {', '.join(AFFINITY_DISTANCES)})")
    return total / (batch * n * n)


def layer_pairs(layers: list[str], default: tuple[str, ...]) -> list[tuple[str, str]]:
    """``loss.affinity_layers`` as (student module, teacher module) names; ``[]`` takes the architecture's
    ``default``. An entry is ``name`` (the same module in both) or ``student_name:teacher_name``."""
    entries = layers or list(default)
    if not entries:
        raise DscloraError(
            "config key loss.affinity_layers: this architecture has no default feature maps; name them "
            "(module names, or student_name:teacher_name)"
        )
    return [tuple(e.split(":", 1)) if ":" in e else (e, e) for e in entries]


class FeatureTap:
    """Keeps the outputs of named modules during a forward (a tuple output counts by its first tensor), so any
    network can be distilled from without a feature-returning forward of its own."""

    def __init__(self, model: nn.Module, names: list[str], what: str) -> None:
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise DscloraError(f"config key loss.affinity_layers: the {what} has no module {missing[0]!r}")
        self.outputs: dict[str, torch.Tensor] = {}
        self._hooks = [modules[n].register_forward_hook(self._keeper(n)) for n in dict.fromkeys(names)]

    def _keeper(self, name: str):
        def keep(_module: nn.Module, _inputs: tuple, output) -> None:
            self.outputs[name] = output[0] if isinstance(output, tuple | list) else output

        return keep

    def take(self) -> dict[str, torch.Tensor]:
        """The outputs of the last forward (and forget them)."""
        outputs, self.outputs = self.outputs, {}
        return outputs

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


class Objective:
    """L = λ1·d(SR, HR) + λ2·d(SR, teacher SR) + λ3·Σ L_AD over the chosen feature-map pairs; usable on its own.

    Terms whose weight is 0 are not computed (nor need their inputs). Returns every computed term and
    ``loss``, the weighted sum.
    """

    def __init__(self, config: LossConfig, pairs: list[tuple[str, str]] | None = None) -> None:
        self.config = config
        self.pairs = pairs or []

    def __call__(
        self,
        sr: torch.Tensor,
        features: dict[str, torch.Tensor] | None = None,
        hr: torch.Tensor | None = None,
        teacher_sr: torch.Tensor | None = None,
        teacher_features: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        c = self.config
        terms: dict[str, torch.Tensor] = {}
        total = sr.new_zeros(())
        if c.rec > 0:
            terms["rec"] = pixel_distance(sr, hr, c.rec_distance)
            total = total + c.rec * terms["rec"]
        if c.teacher > 0:
            terms["ts"] = pixel_distance(sr, teacher_sr.to(sr.dtype), c.teacher_distance)
            total = total + c.teacher * terms["ts"]
        if c.affinity > 0:
            terms["ad"] = sum(
                spatial_affinity_loss(features[s], teacher_features[t], c.affinity_chunk, c.affinity_distance)
                for s, t in self.pairs
            )
            total = total + c.affinity * terms["ad"]
        terms["loss"] = total
        return terms
