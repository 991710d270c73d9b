"""Efficiency figures as the NTIRE ESR challenge reports them (``paper-notes.md`` §4).

- params: sum of ``numel`` over the (deploy) model's parameters;
- FLOPs: multiply-accumulates of the convolutions, as fvcore counts them (``out_numel · in/groups · k²``;
  bias, activations, pixel shuffle and element-wise ops are not counted), for a 1x3x256x256 input;
- activations: sum of conv output numels; convs: number of conv calls in one forward;
- latency: median and min over ``runs`` timed forwards after ``warmup`` (CUDA-synchronised on GPU), with the
  thread count stated; peak memory: ``max_memory_allocated`` on CUDA, the process's peak resident set on CPU
  (reset through ``/proc/self/clear_refs`` before the timed forward where Linux allows it).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from torch import nn

from dsclora.inference import Runner


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.inference_mode()
def conv_statistics(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 256, 256)) -> dict[str, int]:
    """MACs, activations and conv count of one forward, recorded by hooks on every ``nn.Conv2d``."""
    totals = {"macs": 0, "activations": 0, "convs": 0}

    def hook(module: nn.Conv2d, _inputs: tuple, output: torch.Tensor) -> None:
        k = module.kernel_size[0] * module.kernel_size[1]
        totals["macs"] += output.numel() * (module.in_channels // module.groups) * k
        totals["activations"] += output.numel()
        totals["convs"] += 1

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        param = next(model.parameters())
        model(torch.zeros(input_shape, device=param.device, dtype=param.dtype))
    finally:
        for handle in handles:
            handle.remove()
    return totals


def rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
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
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset_peak_rss()
        base = (rss_kib("VmRSS") or 0) * 1024
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runner(x)
        sync()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
        memory = {"peak_memory_bytes": peak, "memory_kind": "cuda max_memory_allocated"}
    else:
        peak = (rss_kib("VmHWM") or 0) * 1024
        memory = {"peak_memory_bytes": peak, "memory_kind": "process peak RSS"}
    return {
        "latency_ms_median": statistics.median(times) * 1e3,
        "latency_ms_min": min(times) * 1e3,
        "runs": runs,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "peak_memory_over_start_bytes": max(peak - base, 0),
        **memory,
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
