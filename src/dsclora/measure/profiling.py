"""Efficiency figures as the NTIRE ESR challenge reports them (``docs/method.md`` §4).

- params: sum of ``numel`` over the (deploy) model's parameters;
- FLOPs: multiply-accumulates, as fvcore counts them, for a 1x3x256x256 input: ``torch.utils.flop_counter``'s
  count halved (it counts a multiply-add as 2 FLOPs): convolutions (``out_numel · in/groups · k²``) and matrix
  products, attention's included; bias, activations, pixel shuffle and other element-wise ops are not counted;
- activations: sum of conv output numels; convs: number of conv calls in one forward;
- tensor peak: the most bytes of tensors one forward holds at once, tracked op by op (``forward_peak_bytes``):
  what sizes tiles, for any architecture;
- latency: median and min over ``runs`` timed forwards after ``warmup`` (CUDA-synchronised on GPU), with the
  thread count stated; peak memory: ``max_memory_allocated`` on CUDA, the process's peak resident set on CPU
  (reset through ``/proc/self/clear_refs`` before the timed forward where Linux allows it). ``peak_memory``
  and ``reset_peak_memory`` are the project's one way to read memory (training logs and benchmarks use them).
"""

from __future__ import annotations

import math
import statistics
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from dsclora.models.descriptor import ModelDescriptor

Runner = Callable[[torch.Tensor], torch.Tensor]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.inference_mode()
def conv_statistics(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 256, 256)) -> dict[str, int]:
    """MACs (every conv and matrix product), conv activations and conv count of one forward.

    Activations and convs as the NTIRE kit counts them: hooks on every ``nn.Conv2d`` (outputs' numel, calls).
    """
    totals = {"macs": 0, "activations": 0, "convs": 0}

    def hook(_module: nn.Conv2d, _inputs: tuple, output: torch.Tensor) -> None:
        totals["activations"] += output.numel()
        totals["convs"] += 1

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        param = next(model.parameters())
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(input_shape, device=param.device, dtype=param.dtype))
    finally:
        for handle in handles:
            handle.remove()
    totals["macs"] = counter.get_total_flops() // 2
    return totals


class _LiveTensorBytes(TorchDispatchMode):
    """Bytes of the tensor storages that ops create inside the mode and that are still alive, and their
    high-water mark. A storage counts once however many views share it; one that existed before (parameters,
    the input) counts never."""

    def __init__(self, existing: list[torch.Tensor]) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.sizes = {id(t.untyped_storage()): 0 for t in existing}  # storage id -> bytes counted

    def _freed(self, key: int) -> None:
        self.live -= self.sizes.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            if id(storage) not in self.sizes:
                self.sizes[id(storage)] = storage.nbytes()
                self.live += storage.nbytes()
                weakref.finalize(storage, self._freed, id(storage))  # torch keeps one Python object per storage
        self.peak = max(self.peak, self.live)
        return out


@torch.inference_mode()
def forward_peak_bytes(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """The most bytes of tensors one forward of ``model`` holds at once (activations and output; not its
    parameters, buffers or input), for a random input of ``input_shape``. Memory an op uses inside itself
    (oneDNN's reorders, scratch space) and the allocator's slack are not seen: ``runtime.upscale.PEAK_MARGIN``."""
    param = next(model.parameters())
    x = torch.rand(input_shape, device=param.device, dtype=param.dtype)
    tracker = _LiveTensorBytes([x, *model.parameters(), *model.buffers()])
    with tracker:
        model(x)
    return tracker.peak


def probe_peak_per_pixel(described: ModelDescriptor) -> float:
    """``forward_peak_bytes`` per LR pixel of the descriptor's network (input range and padding applied) on a
    probe of about 64x64 (rounded up to its size multiple): what ``--tile auto`` estimates memory from."""
    side = max(64 // described.size_multiple, 1) * described.size_multiple
    return forward_peak_bytes(described.runnable(), (1, described.in_channels, side, side)) / side**2


def _status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (0 where there is no such file, e.g. off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory_kind(device: torch.device) -> str:
    return "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS"


def current_memory(device: torch.device) -> int:
    """Bytes in use now: CUDA allocated memory, or the process's resident set."""
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else _status_kib("VmRSS") * 1024


def peak_memory(device: torch.device) -> int:
    """Bytes at the high-water mark since the last ``reset_peak_memory`` (or the start)."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _status_kib("VmHWM") * 1024


def reset_peak_memory(device: torch.device) -> bool:
    """Start a new high-water mark; False where the OS does not allow it (the peak then covers the process)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@torch.inference_mode()
def measure_latency(
    runner: Runner,
    device: torch.device,
    input_shape: tuple[int, ...] = (1, 3, 256, 256),
    runs: int = 10,
    warmup: int = 2,
) -> dict[str, float | int | str | None]:
    """Median / min wall time of ``runner`` on a random input, with peak memory over the timed runs."""
    x = torch.rand(input_shape, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        runner(x)
    sync()
    reset_peak_memory(device)
    base = current_memory(device)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runner(x)
        sync()
        times.append(time.perf_counter() - start)
    peak = peak_memory(device)
    return {
        "latency_ms_median": statistics.median(times) * 1e3,
        "latency_ms_min": min(times) * 1e3,
        "runs": runs,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "peak_memory_over_start_bytes": max(peak - base, 0),
        "peak_memory_bytes": peak,
        "memory_kind": memory_kind(device),
    }


def profile(
    model: nn.Module,
    runner: Runner | None = None,
    input_shape: tuple[int, ...] = (1, 3, 256, 256),
    runs: int = 10,
    warmup: int = 2,
) -> dict:
    """Params, MACs, activations, conv count of ``model``; latency / memory of ``runner`` (default: model)."""
    stats = conv_statistics(model, input_shape)
    device = next(model.parameters()).device
    return {
        "input_shape": list(input_shape),
        "params": count_parameters(model),
        "flops_macs": stats["macs"],
        "activations": stats["activations"],
        "convs": stats["convs"],
        **measure_latency(runner or model, device, input_shape, runs, warmup),
    }


# NTIRE 2025 ESR baseline EFDN, from the challenge report (arXiv 2504.10686): 0.276 M params, 16.70 G FLOPs.
# Its runtime depends on the GPU, so the kit measures it on the same device; here it is the user's --efdn-ms.
EFDN_PARAMS_M = 0.276
EFDN_FLOPS_G = 16.70
SCORE_WEIGHTS = {"runtime": 0.7, "flops": 0.15, "params": 0.15}


def ntire_score(runtime_ms: float | None, flops_g: float, params_m: float, efdn_ms: float | None) -> float | None:
    """Σ w · exp(2 · metric / EFDN's metric) (lower is better); None without EFDN's runtime on this device."""
    if runtime_ms is None or efdn_ms is None:
        return None
    terms = {"runtime": runtime_ms / efdn_ms, "flops": flops_g / EFDN_FLOPS_G, "params": params_m / EFDN_PARAMS_M}
    return sum(SCORE_WEIGHTS[k] * math.exp(2 * v) for k, v in terms.items())


@torch.inference_mode()
def ntire_report(
    model: nn.Module,
    runner: Runner,
    data: str | Path,
    scale: int,
    device: torch.device,
    efdn_ms: float | None = None,
    progress: bool = False,
) -> dict:
    """The kit's fields on a validation folder: RGB PSNR (border = scale), mean runtime per image (CUDA events on
    a GPU, wall clock on a CPU), max memory over the run, FLOPs / params / activations / convs at 256x256."""
    from tqdm import tqdm

    from dsclora.data.benchmark import find_pairs, load_pair
    from dsclora.data.images import to_array, to_tensor, to_uint8
    from dsclora.measure.metrics import psnr_rgb

    pairs = find_pairs(data, scale)
    first = to_tensor(load_pair(pairs[0], scale)[1]).to(device)
    runner(first)  # warm-up: algorithm search, allocator, compilation
    reset_peak_memory(device)
    times, psnrs = [], []
    for pair in tqdm(pairs, desc="ntire", unit="img", disable=not progress, leave=False):
        hr, lr = load_pair(pair, scale)
        x = to_tensor(lr).to(device)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            sr = runner(x)
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            began = time.perf_counter()
            sr = runner(x)
            times.append((time.perf_counter() - began) * 1e3)
        psnrs.append(psnr_rgb(to_uint8(to_array(sr)), hr, scale))
    stats = conv_statistics(model, (1, first.shape[1], 256, 256))
    params = count_parameters(model)
    runtime = statistics.fmean(times)
    return {
        "images": len(pairs),
        "psnr_rgb": statistics.fmean(psnrs),
        "runtime_ms": runtime,
        "runtime_kind": "CUDA events" if device.type == "cuda" else "wall clock",
        "max_memory_mib": peak_memory(device) / 2**20,
        "flops_g": stats["macs"] / 1e9,
        "params_m": params / 1e6,
        "activations_m": stats["activations"] / 1e6,
        "convs": stats["convs"],
        "efdn_runtime_ms": efdn_ms,
        "score": ntire_score(runtime, stats["macs"] / 1e9, params / 1e6, efdn_ms),
    }
