"""``--device``: a name (or ``auto``) to a ``torch.device`` that exists on this machine, what it has, and how
this process keeps the memory its forwards free (``keep_freed_memory``)."""

from __future__ import annotations

import ctypes
import os
import platform
from pathlib import Path

import torch

from dsclora.errors import DscloraError

DEVICES = ("auto", "cpu", "cuda", "mps")
# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it accepts on 64-bit systems
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 << 20
_TRIM_THRESHOLD = 1 << 30


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


def _cpu_info(cpuinfo: Path) -> dict[str, str] | None:
    """The first processor's ``key: value`` lines of /proc/cpuinfo, or None where there is no such file."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    info = dict(line.split(":", 1) for line in text.split("\n\n")[0].splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in info.items()}


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name, family / model numbers and widest vector ISA, from /proc/cpuinfo where there is
    one (a VM may call both a Zen 3 and a Zen 4 just "AMD EPYC", and only the latter has native bf16)."""
    info = _cpu_info(cpuinfo)
    if info is None:
        return platform.processor() or platform.machine()
    name = info.get("model name") or platform.processor() or platform.machine()
    flags = set(info.get("flags", "").split())
    isa = [f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2", "asimd") if f in flags][:2]
    details = [f"family {info['cpu family']} model {info['model']}"] if "cpu family" in info else []
    return f"{name} ({', '.join(details + isa)})" if details or isa else name


def native_bf16(device: torch.device, cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether ``device`` computes bf16 in hardware. Without it (e.g. AMD Zen 3, Intel before Cooper Lake)
    oneDNN emulates bf16 and a bf16 conv is several times slower than fp32 (``benchmarks/results/infer.json``)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    info = _cpu_info(cpuinfo) or {}
    features = set((info.get("flags", "") + " " + info.get("Features", "")).split())  # x86 flags, Arm Features
    return bool(features & {"amx_bf16", "avx512_bf16", "bf16"})


def available_memory(device: torch.device, meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """Bytes a new allocation on ``device`` can still get: free CUDA memory, or the kernel's MemAvailable
    (page cache it can drop included), lowered to what this process's address-space limit (``ulimit -v``) still
    allows; None where none of these can be read."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return min((b for b in (_system_available(meminfo), _address_space_left()) if b is not None), default=None)


def _system_available(meminfo: Path) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _address_space_left(status: Path = Path("/proc/self/status")) -> int | None:
    """RLIMIT_AS minus the address space already mapped (VmSize); None without a limit."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit == resource.RLIM_INFINITY:
            return None
        for line in status.read_text().splitlines():
            if line.startswith("VmSize:"):
                return max(limit - int(line.split()[1]) * 1024, 0)
    except (ImportError, OSError, ValueError, IndexError):
        pass
    return None


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep the feature maps a forward frees for the next one instead of returning them.

    By default glibc serves blocks above its mmap threshold (128 KiB, raised at most to the largest block freed
    so far) with fresh mmaps and trims the heap's free top back to the OS, so every forward page-faults its
    feature maps in again (``benchmarks/infer.py`` counts the faults per forward of every path). Raising the
    mmap threshold to its ceiling (32 MiB) and the trim threshold to 1 GiB keeps those pages mapped. Only the
    process that runs the job should call this (the command line does): memory it frees then stays with it
    until it exits. A user's own thresholds (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``,
    ``GLIBC_TUNABLES``) win, and a C library without ``mallopt`` is left alone. Returns whether it changed
    anything.
    """
    users_own = any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"))
    if platform.system() != "Linux" or users_own or "threshold" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
