"""Every conversion of a network (merge, form change, export) is checked to compute what it was given before
anything is written: the two are run on a real-looking image and compared."""

from __future__ import annotations

import torch
from torch import nn

from dsclora.data.images import probe_image
from dsclora.errors import DscloraError
from dsclora.models.adapters import merge

EXACT = 1e-4  # largest output difference (on a [0, 1] image) a conversion may show; fp32 rounding is ~1e-6


@torch.no_grad()
def max_abs_difference(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    """Largest absolute output difference of two networks on ``x`` (both run in eval mode, modes restored)."""
    modes = (a.training, b.training)
    a.eval()
    b.eval()
    try:
        return (a(x).float() - b(x).float()).abs().max().item()
    finally:
        a.train(modes[0])
        b.train(modes[1])


def check_same_function(source: nn.Module, converted: nn.Module, what: str, size: int = 48) -> float:
    """The max abs difference of two [0, 1]-image networks on a probe image; above ``EXACT`` it is an error."""
    param = next(source.parameters())
    probe = probe_image(size, size).to(device=param.device, dtype=param.dtype)
    diff = max_abs_difference(source, converted, probe)
    if not diff <= EXACT:
        raise DscloraError(f"the {what} differs from its source by {diff:.2e} (> {EXACT:.0e}); not written")
    return diff


def checked_merge(model: nn.Module, wrap=lambda m: m) -> tuple[nn.Module, float]:
    """``adapters.merge(model)`` and its max abs difference to ``model``, both run through ``wrap`` (a
    descriptor's ``runnable``, which applies input range and padding); 0.0 unchecked when nothing was merged."""
    if not any(callable(getattr(m, "fused", None)) and not getattr(m, "deploy", False) for m in model.modules()):
        return merge(model), 0.0
    merged = merge(model)
    return merged, check_same_function(wrap(model), wrap(merged), "merged model")
