"""bf16 conv weights that keep each kernel's response to a flat input: what makes bf16 convs close to fp32.

Rounding every weight to its nearest bf16 value (what autocast does) moves each 3x3 kernel's sum by up to nine
half-ulps, all in the same direction as often as not. Image features are mostly smooth, so a conv's output is
dominated by that sum (its response to a locally flat input), and the shifts add up through the network like a
small change of gain: on Set5 x4 the shipped SPAN-tiny with nearest-rounded bf16 weights (all else fp32) lost
0.009 dB of Y-PSNR; rounded as here, 0.002 (``benchmarks/infer.py`` measures the whole paths).

Each weight still becomes one of its two bf16 neighbours, so no single weight is off by more than one bf16 ulp;
only which neighbour is chosen changes. Greedily, per (output, input) kernel, the tap whose flip brings the
kernel's sum closest to the fp32 sum is flipped, until no flip helps; then the same per output channel over all
its inputs (a flat input excites every input channel at once). Deterministic, data-free, a few milliseconds.
"""

from __future__ import annotations

import torch

KERNEL_FLIPS = 16  # a 3x3 kernel settles in a few flips; the bound only stops a pathological loop
CHANNEL_FLIPS = 64


def _neighbours(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The bf16 values just below and just above each fp32 value (equal where it is already a bf16 value)."""
    nearest = weight.to(torch.bfloat16)
    up = torch.nextafter(nearest, torch.tensor(float("inf"), dtype=torch.bfloat16)).float()
    down = torch.nextafter(nearest, torch.tensor(float("-inf"), dtype=torch.bfloat16)).float()
    near = nearest.float()
    return torch.where(near <= weight, near, down), torch.where(near >= weight, near, up)


def _keep_sums(weight: torch.Tensor, rounded: torch.Tensor, groups: int, flips: int) -> torch.Tensor:
    """Flip taps between their two bf16 neighbours so each of ``groups`` rows keeps the fp32 row sum."""
    low, high = (t.reshape(groups, -1) for t in _neighbours(weight))
    want, got = weight.reshape(groups, -1), rounded.reshape(groups, -1).clone()
    for _ in range(flips):
        error = (want - got).sum(1, keepdim=True)
        other = torch.where(got == low, high, low)
        gain = error.abs() - (error - (other - got)).abs()  # how much closer each single flip brings the sum
        best = gain.argmax(1, keepdim=True)
        flip = torch.zeros_like(got, dtype=torch.bool).scatter_(1, best, gain.gather(1, best) > 0)
        if not flip.any():
            break
        got = torch.where(flip, other, got)
    return got.reshape(weight.shape)


@torch.no_grad()
def bf16_keeping_sums(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (out, in, kh, kw) rounded to bf16 values, kernel and channel sums kept (see the module
    docstring); returned as float32 holding exact bf16 values, so a later cast to bf16 changes nothing."""
    weight = weight.detach().float()
    out_channels, in_channels = weight.shape[:2]
    rounded = weight.to(torch.bfloat16).float()
    if weight[0, 0].numel() > 1:
        rounded = _keep_sums(weight, rounded, out_channels * in_channels, KERNEL_FLIPS)
    return _keep_sums(weight, rounded, out_channels, CHANNEL_FLIPS)
