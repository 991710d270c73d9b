"""``--device``: a name (or ``auto``) to a ``torch.device`` that exists on this machine."""

from __future__ import annotations

import torch

from dsclora.errors import DscloraError

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA where available, else the CPU; an explicit device must be present."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind = name.split(":")[0]
    if kind not in DEVICES[1:]:
        raise DscloraError(f"unknown device {name!r} (use {', '.join(DEVICES)})")
    if kind == "cuda" and not torch.cuda.is_available():
        raise DscloraError(f"--device {name}: no CUDA device is available")
    if kind == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise DscloraError("--device mps: MPS is not available")
    return torch.device(name)
