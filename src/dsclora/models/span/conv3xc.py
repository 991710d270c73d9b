"""Conv3XC: SPAN's re-parameterisable 3x3 convolution.

Training form (Wan et al., SPAN, CVPRW 2024): a 1x1 skip conv plus a chain 1x1 (in -> g*in), 3x3 valid conv
(g*in -> g*out) on the input zero-padded by one pixel, 1x1 (g*out -> out); all with bias, no activation.
The chain is linear, so it collapses exactly into one 3x3 conv with padding 1 (the deploy form, stored as
``eval_conv`` in every SPAN checkpoint). Derivation, with W1 (m, in), W2 (n, m, 3, 3), W3 (out, n):

    K[o, i, y, x] = sum_{n, m} W3[o, n] W2[n, m, y, x] W1[m, i]   (+ W_sk[o, i] at the centre tap)
    b[o]          = sum_n W3[o, n] (b2[n] + sum_{m, y, x} W2[n, m, y, x] b1[m]) + b3[o] + b_sk[o]

The padded border is exact too: the chain's first 1x1 maps a zero pad to b1, whose contribution is already
in ``b`` for every output pixel, and the collapsed conv's zero pad contributes nothing from ``K``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Conv3XC(nn.Module):
    """A 3x3 conv that trains as a wide linear chain and deploys as one conv.

    ``deploy=True`` builds only ``eval_conv`` (the checkpoint layout of released SPAN models);
    ``deploy=False`` builds ``sk`` and ``conv.0/1/2`` (BasicSR's training layout, read by spandrel).
    """

    def __init__(self, in_channels: int, out_channels: int, gain: int = 2, deploy: bool = False) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.gain = gain
        self.deploy = deploy
        if deploy:
            self.eval_conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        else:
            self.sk = nn.Conv2d(in_channels, out_channels, 1)
            self.conv = nn.Sequential(
                nn.Conv2d(in_channels, in_channels * gain, 1),
                nn.Conv2d(in_channels * gain, out_channels * gain, 3),
                nn.Conv2d(out_channels * gain, out_channels, 1),
            )

    def fused_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The single 3x3 kernel and bias equal to the training-form branches (differentiable)."""
        if self.deploy:
            return self.eval_conv.weight, self.eval_conv.bias
        w1 = self.conv[0].weight[:, :, 0, 0]  # (m, in)
        w2 = self.conv[1].weight  # (n, m, 3, 3)
        w3 = self.conv[2].weight[:, :, 0, 0]  # (out, n)
        kernel = torch.einsum("on,nmyx,mi->oiyx", w3, w2, w1)
        kernel = kernel + F.pad(self.sk.weight, (1, 1, 1, 1))
        chain_bias = self.conv[1].bias + torch.einsum("nmyx,m->n", w2, self.conv[0].bias)
        bias = w3 @ chain_bias + self.conv[2].bias + self.sk.bias
        return kernel, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deploy:
            return self.eval_conv(x)
        # One conv with the fused kernel: the same function as the branch sum, at a quarter of its cost.
        weight, bias = self.fused_weight_and_bias()
        return F.conv2d(x, weight, bias, padding=1)

    @torch.no_grad()
    def fused(self) -> Conv3XC:
        """A deploy-form copy whose ``eval_conv`` holds the collapsed kernel (what ``adapters.merge`` puts in its place)."""
        weight, bias = self.fused_weight_and_bias()
        deployed = Conv3XC(self.in_channels, self.out_channels, self.gain, deploy=True)
        deployed = deployed.to(device=weight.device, dtype=weight.dtype)
        deployed.eval_conv.weight.copy_(weight)
        deployed.eval_conv.bias.copy_(bias)
        return deployed

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, gain={self.gain}, deploy={self.deploy}"
