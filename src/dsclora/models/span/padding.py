"""Exact channel padding: the same network with its feature width rounded up to a multiple the hardware likes.

GPU convolution kernels (cuDNN, tensor cores) run channel counts that are multiples of 8 (fp16) or more far
faster than odd widths: on an H100 one 26-channel 3x3 conv ran at 25x its compute bound, a 32-channel one at
4x. Padding a SPAN from C to C' channels with zeros computes the same function exactly: every padded channel
is 0 out of conv_1 (zero weights and bias); in each SPAB it stays 0 (silu(0) = 0, and the attention gate
sigmoid(0) - 0.5 = 0 multiplies it); conv_2 keeps it 0, and conv_cat and the upsampler give it zero weight. The
padded network costs more FLOPs, so it is a runtime choice (``autotune`` measures it), never a saved model.
"""

from __future__ import annotations

import torch

from dsclora.models.span.network import SPAN, SpanConfig


def _padded(weight: torch.Tensor, out_index: torch.Tensor, in_index: torch.Tensor, shape: tuple) -> torch.Tensor:
    """``weight`` scattered into zeros of ``shape`` at the given output / input channel positions."""
    padded = weight.new_zeros(shape)
    padded[out_index[:, None], in_index[None, :]] = weight
    return padded


@torch.no_grad()
def pad_channels(model: SPAN, multiple: int) -> SPAN:
    """A deploy-form copy of ``model`` whose width is the next multiple of ``multiple`` (a copy even if equal)."""
    if type(model) is not SPAN or not model.deploy:
        raise ValueError("pad_channels needs a plain deploy-form SPAN (forms.to_deploy first)")
    c = model.config.channels
    wide = -(-c // multiple) * multiple
    config = SpanConfig.from_dict({**model.config.to_dict(), "channels": wide})
    param = next(model.parameters())
    padded = SPAN(config, deploy=True).to(device=param.device, dtype=param.dtype)
    keep = torch.arange(c, device=param.device)
    all_in = torch.arange(model.config.in_channels, device=param.device)
    all_out = torch.arange(model.upsampler[0].out_channels, device=param.device)
    groups = torch.cat([keep + g * wide for g in range(4)])  # conv_cat reads four feature maps side by side
    source = dict(model.named_parameters())
    for name, target in padded.named_parameters():
        weight = source[name]
        if name.startswith("conv_1."):
            rows, cols = keep, all_in
        elif name.startswith("upsampler."):
            rows, cols = all_out, keep
        elif name.startswith("conv_cat."):
            rows, cols = keep, groups
        else:
            rows, cols = keep, keep
        if weight.dim() == 1:
            target.zero_()
            target[rows] = weight
        else:
            target.copy_(_padded(weight, rows, cols, tuple(target.shape)))
    return padded.train(model.training)
