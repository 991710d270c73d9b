"""``--device``: a name (or ``auto``) to a ``torch.device`` that exists on this machine."""

from __future__ import annotations

import platform
from pathlib import Path

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


def device_name(device: torch.device) -> str:
    """The hardware model behind ``device`` (GPU name, or CPU model and thread count).

    Speed figures and ``auto``'s cached choices are only valid on the hardware they were measured on, and the
    same machine name can hide different CPUs, so they are keyed by this.
    """
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} x{torch.get_num_threads()} threads"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo where there is one, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
