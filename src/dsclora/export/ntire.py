"""Files for the NTIRE Efficient-SR test kit: ``teamNN_Name.py`` (a plain module) and ``teamNN_Name.pth``.

The kit imports ``models/teamNN_Name.py``, builds the class with its default arguments and loads
``model_zoo/teamNN_Name.pth`` strictly (NTIRE 2024 / 2025 ESR ``test_demo.py``). The module written here
defines the deploy-form SPAN with torch alone (no dsclora import), with the state-dict keys of the official
SPAN / DSCLoRA checkpoints; the weights file is a plain state dict like theirs.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from dsclora.errors import DscloraError
from dsclora.fs import atomic_write
from dsclora.models.forms import to_deploy
from dsclora.models.span import SPAN
from dsclora.version import __version__

_MODULE = '''"""{name}: SPAN in deploy form (C={channels}, {blocks} blocks, x{scale}), written by dsclora {version}.

Self-contained (torch only). Weights: {stem}.pth, a plain state dict. Input RGB in [0, 1]; output not clamped.
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
        head = self.conv_1((x - self.mean) * self.img_range)
        out, act = head, head
        first = None
        for i in range(1, self.blocks + 1):
            out, act = getattr(self, f"block_{{i}}")(out)
            first = out if first is None else first
        tail = self.conv_2(out)
        return self.upsampler(self.conv_cat(torch.cat([head, tail, first, act], dim=1)))
'''


def ntire_stem(team: int, name: str) -> str:
    """``teamNN_Name`` as the kit names its files; ``name`` must be a Python identifier (it is the class)."""
    if not 0 <= team <= 999:
        raise DscloraError(f"--team {team}: expected a team number 0-999")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise DscloraError(f"--name {name!r}: must be a Python identifier (letters, digits, _), it names the class")
    return f"team{team:02d}_{name}"


def export_ntire(model: SPAN, folder: str | Path, team: int, name: str) -> tuple[Path, Path]:
    """Write ``teamNN_Name.py`` and ``teamNN_Name.pth`` into ``folder``; returns both paths."""
    deployed = to_deploy(model).float().cpu()
    c = deployed.config
    stem = ntire_stem(team, name)
    source = _MODULE.format(
        name=name,
        stem=stem,
        version=__version__,
        channels=c.channels,
        blocks=c.blocks,
        scale=c.scale,
        in_channels=c.in_channels,
        out_channels=c.out_channels,
        img_range=float(c.img_range),
        rgb_mean=tuple(c.rgb_mean),
    )
    folder = Path(folder)
    module_path, weights_path = folder / f"{stem}.py", folder / f"{stem}.pth"
    state = {k: v.detach().contiguous() for k, v in deployed.state_dict().items()}
    with atomic_write(weights_path) as tmp:
        torch.save(state, tmp)
    with atomic_write(module_path) as tmp:
        tmp.write_text(source)
    return module_path, weights_path
