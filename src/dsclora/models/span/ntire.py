"""SPAN as a self-contained module file for the NTIRE Efficient-SR test kit (``export --format ntire``).

The kit imports ``models/teamNN_Name.py``, builds the class and loads ``model_zoo/teamNN_Name.pth`` strictly
(NTIRE 2024 / 2025 ESR ``test_demo.py``). The module written here defines the deploy-form SPAN with torch alone
(no dsclora import), with the state-dict keys of the official SPAN / DSCLoRA checkpoints, and constructor
defaults that are this network's sizes, so ``Name()`` builds it.
"""

from __future__ import annotations

import torch

from dsclora.models.span.network import SPAN
from dsclora.version import __version__

_MODULE = '''"""{name}: SPAN in deploy form (C={channels}, {blocks} blocks, x{scale}{no_norm}), written by dsclora {version}.

Self-contained (torch only). Weights: a plain state dict of the same keys. Input RGB in [0, 1]; output not clamped.
"""

import torch
import torch.nn.functional as F
from torch import nn


class Conv3(nn.Module):
    """A re-parameterised Conv3XC: one 3x3 conv, stored as ``eval_conv``."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.eval_conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x):
        return self.eval_conv(x)


class Block(nn.Module):
    """SPAB: returns its output and silu(c1(x)), which the network's conv_cat reads from the last block."""

    def __init__(self, channels):
        super().__init__()
        self.c1_r = Conv3(channels, channels)
        self.c2_r = Conv3(channels, channels)
        self.c3_r = Conv3(channels, channels)

    def forward(self, x):
        h1 = F.silu(self.c1_r(x))
        h3 = self.c3_r(F.silu(self.c2_r(h1)))
        return (h3 + x) * (torch.sigmoid(h3) - 0.5), h1


class {name}(nn.Module):
    def __init__(self, num_in_ch={in_channels}, num_out_ch={out_channels}, feature_channels={channels}, upscale={scale},
                 blocks={blocks}, img_range={img_range!r}, rgb_mean={rgb_mean!r}):
        super().__init__()
        self.img_range = img_range
        self.register_buffer("mean", torch.tensor(rgb_mean).view(1, -1, 1, 1), persistent=False)
        self.blocks = blocks
        self.conv_1 = Conv3(num_in_ch, feature_channels)
        for i in range(1, blocks + 1):
            self.add_module(f"block_{{i}}", Block(feature_channels))
        self.conv_cat = nn.Conv2d(4 * feature_channels, feature_channels, 1)
        self.conv_2 = Conv3(feature_channels, feature_channels)
        self.upsampler = nn.Sequential(
            nn.Conv2d(feature_channels, num_out_ch * upscale * upscale, 3, padding=1), nn.PixelShuffle(upscale)
        )

    def forward(self, x):
        head = self.conv_1({normalised})
        out, act = head, head
        first = None
        for i in range(1, self.blocks + 1):
            out, act = getattr(self, f"block_{{i}}")(out)
            first = out if first is None else first
        tail = self.conv_2(out)
        return self.upsampler(self.conv_cat(torch.cat([head, tail, first, act], dim=1)))
'''


def ntire_module(model: SPAN, class_name: str) -> tuple[str, dict[str, torch.Tensor]]:
    """The module text defining ``class_name`` for a deploy-form ``model``, and the state dict it loads strictly
    (the NTIRE hook; ``norm=False`` is written into the code, so its ``no_norm`` marker is not a weight there)."""
    c = model.config
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items() if k != "no_norm"}
    source = _MODULE.format(
        name=class_name,
        version=__version__,
        channels=c.channels,
        blocks=c.blocks,
        scale=c.scale,
        in_channels=c.in_channels,
        out_channels=c.out_channels,
        img_range=float(c.img_range),
        rgb_mean=tuple(c.rgb_mean),
        normalised="(x - self.mean) * self.img_range" if c.norm else "x",
        no_norm="" if c.norm else ", no input normalisation",
    )
    return source, state
