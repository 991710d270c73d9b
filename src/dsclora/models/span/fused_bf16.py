"""BF16SPAN: FusedSPAN with its feature convs in bf16 and fp32 only where bf16 would cost accuracy.

Plain bf16 autocast runs a SPAN ~2x faster than fp32 on CPUs with native bf16 but loses 0.01-0.02 dB Y-PSNR on
Set5 x4 (``benchmarks/infer.py``). Emulating each bf16 rounding separately in fp32 showed where that comes from,
and each source has a remedy that costs little:

- **weights**: nearest rounding shifts every kernel's sum; ``models.rounding.bf16_keeping_sums`` keeps them;
- **the gate's input**: a SPAB computes ``(h3 + x) * (sigmoid(h3) - 0.5)``, and in the channels that matter most
  ``h3 = conv(h2) + b`` is dominated by its bias ``b``, so rounding ``h3`` to bf16 loses most of what varies.
  The conv runs without bias and ``b`` is added in fp32 afterwards: the rounding then applies only to
  ``conv(h2)`` (this alone was half the remaining error);
- **the residual stream, the gate and the sum feeding the upsampler** stay fp32 (the gate's ``sigmoid - 0.5``
  cancels catastrophically in bf16); each block's output is rounded once, into the bf16 copy its convs read;
- **the input and output sides**: conv_1 and head_proj read the x255-shifted 3-channel input in fp32 (cheap:
  3 input channels) and the upsampler writes the output in fp32 (bf16 leaves ~1/4 grey level of rounding).

So the 18 block convs and the three projections (~85 % of the MACs) run in bf16 with fp32 accumulation; SiLU is
fused into c1 and c2 as a oneDNN post-op, and the output is pixel-shuffled in one copy. CPU only: it calls
oneDNN's fused conv op directly (``torch.ops.mkldnn._convolution_pointwise``, the op Inductor emits for CPU
convs), which also takes an fp32 bias with bf16 data.

The fp32 element-wise passes (c3's bias, the gate, the residual update and its bf16 copy, the sums into the
upsampler's input) run over row bands of ``_BAND`` elements (``_row_bands``; a channels-last row band is
contiguous), so each band's passes stay in a core's cache. Over whole tensors every pass streamed a full
feature map through memory, and at 960x540 each bf16 -> fp32 conversion allocated a fresh 54 MB buffer (above
glibc's mmap threshold: page faults on every call): on one Zen 4 (2 threads, ``benchmarks/infer.py``) the bands
took a 480x270 forward from 225 to 209 ms and a 960x540 one from 1235 to 926 ms (plain bf16: 188 / 870 ms),
with bands of 2^18 elements. ``benchmarks/bf16_bands.py`` times 2^17 .. 2^20: on the same machine 2^19 and 2^20
were within noise of each other and ahead of the smaller bands (480x270: 189 / 199 / 180 / 178 ms; 960x540:
888 / 847 / 839 / 824 ms): 2^19, 1 MiB of fp32 per thread of two. Re-timed once freed memory was kept
(``devices.keep_freed_memory``, as the command line runs), with 2^15 and 2^16 added: 2^19 was again the fastest
at 480x270 (188 ms; 195-252 ms for the others) and within 7 % of the best at 960x540 (2^20: 743, 2^19: 792 ms;
fp32 1815 ms, a slower day on the same CPU model), so it stays.

``low=torch.float32`` computes the same function as FusedSPAN (tests check it to 1e-5 on real images): the
rewrite itself is exact, only the bf16 roundings differ.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from dsclora.models.rounding import bf16_keeping_sums
from dsclora.models.span.fused import FusedSPAN, pixel_shuffle_to_nchw

_CL = torch.channels_last
_BAND = 1 << 19  # elements (2 MiB in fp32): see the module docstring


class _Conv(nn.Module):
    """A conv's weight (rounded to ``dtype`` keeping sums, channels-last) and fp32 bias, run through oneDNN."""

    def __init__(self, conv: nn.Conv2d, dtype: torch.dtype, keep_bias: bool = True) -> None:
        super().__init__()
        weight = conv.weight.detach().float()
        if dtype != torch.float32:
            weight = bf16_keeping_sums(weight)
        self.register_buffer("weight", weight.to(dtype).contiguous(memory_format=_CL), persistent=False)
        bias = conv.bias.detach().float() if conv.bias is not None else None
        self.register_buffer("bias", bias if keep_bias else None, persistent=False)
        self.padding = conv.padding[0]

    def forward(self, x: torch.Tensor, silu: bool = False) -> torch.Tensor:
        if torch.compiler.is_compiling():
            # aten convs, which Inductor lowers to the same oneDNN op with SiLU as a post-op (handed this op
            # directly it computed it in fp32, converting the bf16 weights on every call); the bias in the
            # weight's dtype, as aten's conv wants it
            bias = self.bias.to(self.weight.dtype) if self.bias is not None else None
            y = F.conv2d(x, self.weight, bias, padding=self.padding)
            return F.silu(y) if silu else y
        pad, one = [self.padding, self.padding], [1, 1]
        attr = "swish" if silu else "none"  # oneDNN's name for SiLU
        return torch.ops.mkldnn._convolution_pointwise(x, self.weight, self.bias, pad, one, one, 1, attr, [], None)


def _row_bands(t: torch.Tensor) -> Iterator[slice]:
    """Row ranges of a channels-last NCHW-shaped tensor, each about ``_BAND`` elements: contiguous in memory,
    small enough that the element-wise passes over one band stay in a core's cache. One band under
    torch.compile, which fuses those passes itself."""
    if torch.compiler.is_compiling():
        return iter([slice(None)])
    n, c, h, w = t.shape
    rows = max(1, _BAND // (n * c * w))
    return (slice(r, r + rows) for r in range(0, h, rows))


def _accumulate(total: torch.Tensor, part: torch.Tensor) -> None:
    """``total += part`` (fp32 += bf16) band by band: the whole-tensor add first converts all of ``part``."""
    for rows in _row_bands(total):
        total[:, :, rows].add_(part[:, :, rows])


class _Block(nn.Module):
    def __init__(self, block: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.c1 = _Conv(block.c1_r.eval_conv, dtype)
        self.c2 = _Conv(block.c2_r.eval_conv, dtype)
        self.c3 = _Conv(block.c3_r.eval_conv, dtype, keep_bias=False)
        self.register_buffer("c3_bias", block.c3_r.eval_conv.bias.detach().float().view(1, -1, 1, 1), persistent=False)

    def forward(self, low: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(block output in fp32, written over ``residual``; its copy in the low dtype; silu(c1) in the low
        dtype). The gate's fp32 passes run band by band (``_row_bands``)."""
        h1 = self.c1(low, silu=True)
        c3 = self.c3(self.c2(h1, silu=True))
        low_out = torch.empty_like(c3)
        for rows in _row_bands(c3):
            h3 = c3[:, :, rows].float().add_(self.c3_bias)  # fp32: the bias after the rounding
            gate = torch.sigmoid(h3).sub_(0.5)
            band = residual[:, :, rows]
            band.add_(h3).mul_(gate)
            low_out[:, :, rows].copy_(band)
        return residual, low_out, h1


class BF16SPAN(nn.Module):
    """See the module docstring; build with ``from_fused``. NCHW float32 in, NCHW float32 out."""

    def __init__(self, fused: FusedSPAN, low: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.config, self.low = fused.config, low
        self.register_buffer("mean", fused.mean.detach().float().clone(), persistent=False)
        self.conv_1 = _Conv(fused.conv_1, torch.float32)
        self.head_proj = _Conv(fused.head_proj, torch.float32)
        self.blocks = nn.ModuleList(_Block(block, low) for block in fused.blocks)
        self.first_block_proj = _Conv(fused.first_block_proj, low)
        self.act_proj = _Conv(fused.act_proj, low)
        self.tail_proj = _Conv(fused.tail_proj, low)
        self.upsampler = _Conv(fused.upsampler[0], torch.float32)

    @classmethod
    def from_fused(cls, fused: FusedSPAN) -> BF16SPAN:
        """The bf16 form of a FusedSPAN (``ArchHooks.accurate_bf16_form``)."""
        return cls(fused).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.config.norm:
            x = (x - self.mean) * self.config.img_range
        x = x.contiguous(memory_format=_CL)
        residual = self.conv_1(x)
        joined = self.head_proj(x)  # fp32: every term of the upsampler's input is summed into it
        low = act = residual.to(self.low)
        for i, block in enumerate(self.blocks):
            residual, low, act = block(low, residual)
            if i == 0:
                _accumulate(joined, self.first_block_proj(low))
        _accumulate(joined, self.act_proj(act))
        _accumulate(joined, self.tail_proj(low))
        return pixel_shuffle_to_nchw(self.upsampler(joined), self.config.scale)
