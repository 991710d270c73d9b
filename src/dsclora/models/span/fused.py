"""FusedSPAN: the same function as a SPAN, regrouped for inference so less memory traffic surrounds the convs.

SPAN ends with ``conv_cat``, a 1x1 conv over the channel concatenation [head, tail, b1, act] (conv_1 out,
conv_2 out, block 1 out, last block's silu(c1)). A 1x1 conv over a concatenation is the sum of 1x1 convs over
its parts, W·[h, t, b, a] = W_h·h + W_t·t + W_b·b + W_a·a, and two of the parts are linear in what precedes them:

- ``W_t · conv_2(out)`` is one 3x3 conv of ``out`` with kernel ``W_t ∘ K_2`` (a 1x1 after a 3x3 adds no
  padding in between, so borders are exact too);
- ``W_h · conv_1(x)`` is one 3x3 conv of the 3-channel normalised input with kernel ``W_h ∘ K_1``.

So the concatenation (a strided copy of four feature maps in channels-last memory) and the memory-bound 104-wide
1x1 disappear; what remains are 3x3 convs plus two 26-wide 1x1 convs whose results are summed, which
Inductor / oneDNN fuse as "conv + add" post-ops. The result equals SPAN's up to float rounding order
(checked in tests on real images); FLOPs are slightly lower (``W_t`` is absorbed). Inference only: the
distillation features (``forward_features``) are not produced.

The pixel shuffle writes the NCHW output in one strided copy from channels-last memory
(``pixel_shuffle_to_nchw``): PixelShuffle followed by ``.contiguous()`` made two passes over the 16x larger
output and cost ~30 ms of a 480x270 forward on one Zen 4 thread (the output is the largest tensor of the net).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from dsclora.models.span.forms import to_deploy
from dsclora.models.span.network import SPAN


def _conv(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv2d:
    out_c, in_c, k, _ = weight.shape
    conv = nn.Conv2d(in_c, out_c, k, padding=k // 2, bias=bias is not None).to(weight.device, weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv


_SEGMENT_DTYPES = {8: torch.int64, 16: torch.complex128}  # bytes -> a dtype that moves them as one element


def pixel_shuffle_to_nchw(y: torch.Tensor, scale: int) -> torch.Tensor:
    """``F.pixel_shuffle(y, scale)`` as a contiguous NCHW tensor, in one copy when ``y`` is channels-last.

    Channels-last memory is (n, h, w, c) with c = (colour, row offset, column offset): the ``scale`` values of
    one output row segment are adjacent in ``y``. Where they make 16 or 8 bytes (x4 fp32; x2 fp32, x4 bf16)
    the copy moves each segment as one complex128 / int64 element (bits untouched), so its inner loop runs
    along the width instead of over ``scale`` values. Not under torch.compile: Inductor fuses the copy itself
    and has no code generation for complex tensors.
    """
    n, c, h, w = y.shape
    if c == 1 or not y.is_contiguous(memory_format=torch.channels_last) or y.is_contiguous():
        return F.pixel_shuffle(y, scale).contiguous()
    out_c = c // (scale * scale)
    nhwc = y.permute(0, 2, 3, 1)
    wide = _SEGMENT_DTYPES.get(scale * y.element_size())
    if wide is not None and y.storage_offset() % scale == 0 and not torch.compiler.is_compiling():
        segments = nhwc.view(wide).reshape(n, h, w, out_c, scale)  # (.., colour, row offset): one segment each
        rows = segments.permute(0, 3, 1, 4, 2).contiguous()  # (n, colour, h, row offset, w)
        return rows.view(y.dtype).reshape(n, out_c, h * scale, w * scale)
    grid = nhwc.reshape(n, h, w, out_c, scale, scale)
    return grid.permute(0, 3, 1, 4, 2, 5).reshape(n, out_c, h * scale, w * scale)


class FusedSPAN(nn.Module):
    """A SPAN with ``conv_2`` and ``conv_cat`` regrouped (see the module docstring); build with ``from_span``."""

    def __init__(self, span: SPAN) -> None:
        """``span`` must be in deploy form (``forms.to_deploy``); its blocks are copied, not shared."""
        super().__init__()
        self.config = span.config
        self.register_buffer("mean", span.mean.clone(), persistent=False)
        c = span.config.channels
        k1, b1 = (t.detach() for t in span.conv_1.fused_weight_and_bias())
        k2, b2 = (t.detach() for t in span.conv_2.fused_weight_and_bias())
        w_h, w_t, w_b, w_a = span.conv_cat.weight.detach()[:, :, 0, 0].split(c, dim=1)
        self.conv_1 = _conv(k1, b1)
        self.blocks = nn.ModuleList(copy.deepcopy(b) for b in span.blocks)
        # every bias of the joined sum lives in head_proj, the term computed first
        bias = span.conv_cat.bias.detach() + w_h @ b1 + w_t @ b2
        self.head_proj = _conv(torch.einsum("on,nixy->oixy", w_h, k1), bias)
        self.first_block_proj = _conv(w_b[:, :, None, None], None)
        self.act_proj = _conv(w_a[:, :, None, None], None)
        self.tail_proj = _conv(torch.einsum("on,nixy->oixy", w_t, k2), None)
        self.upsampler = copy.deepcopy(span.upsampler)

    @classmethod
    @torch.no_grad()
    def from_span(cls, span: SPAN) -> FusedSPAN:
        """The fused form of any SPAN or DSCLoRA student, training form or deploy form."""
        return cls(to_deploy(span)).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.norm:
            x = (x - self.mean.to(x.dtype)) * self.config.img_range
        out = act = self.conv_1(x)
        joined = self.head_proj(x)
        for i, block in enumerate(self.blocks):
            out, act = block(out)
            if i == 0:
                joined = self.first_block_proj(out) + joined
        joined = self.act_proj(act) + joined
        joined = self.tail_proj(out) + joined
        # NCHW out whatever the memory format inside: compiled, the layout change fuses into the pixel shuffle
        return pixel_shuffle_to_nchw(self.upsampler[0](joined), self.config.scale)
