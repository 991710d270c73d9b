"""SPAN: Swift Parameter-free Attention Network (Wan et al., CVPRW 2024; NTIRE 2024 ESR winner).

Facts this file follows (``docs/method.md`` §1, checked against the official checkpoints):
- input in [0, 1] is shifted by the DIV2K RGB mean and scaled by 255 inside; the output is neither
  de-normalised nor clamped;
- each SPAB returns ``silu(c1(x))`` as well as its output: the official block applies SiLU in place, so the
  tensor that ``conv_cat`` receives from the last block has already been through SiLU;
- ``conv_cat`` joins [conv_1 out, conv_2 out, block 1 out, last block's silu(c1)], then a 3x3 conv and
  PixelShuffle upsample. There is no global skip.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dsclora.models.conv3xc import Conv3XC

DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


@dataclass(frozen=True)
class SpanConfig:
    """Hyperparameters of a SPAN; everything else is detected from a checkpoint's tensor shapes."""

    channels: int = field(default=48, metadata={"help": "feature width C (48 SPAN, 28 ch28, 26 SPAN-tiny)"})
    blocks: int = field(default=6, metadata={"help": "number of SPABs"})
    scale: int = field(default=4, metadata={"help": "upscaling factor (1-8)"})
    in_channels: int = field(default=3, metadata={"help": "image channels in"})
    out_channels: int = field(default=3, metadata={"help": "image channels out"})
    img_range: float = field(default=255.0, metadata={"help": "the input is scaled by this after the mean shift"})
    rgb_mean: tuple[float, ...] = field(
        default=DIV2K_RGB_MEAN, metadata={"help": "mean subtracted from the [0, 1] input (DIV2K's RGB mean)"}
    )

    def __post_init__(self) -> None:
        if self.channels < 1 or self.blocks < 1 or self.in_channels < 1 or self.out_channels < 1:
            raise ValueError(f"SpanConfig needs positive sizes, got {self}")
        if not 1 <= self.scale <= 8:
            raise ValueError(f"SpanConfig.scale must be in 1..8, got {self.scale}")
        if len(self.rgb_mean) != self.in_channels:
            # A mean per input channel; the DIV2K default only makes sense for RGB.
            mean = DIV2K_RGB_MEAN if self.in_channels == 3 else (0.5,) * self.in_channels
            object.__setattr__(self, "rgb_mean", tuple(mean))
        object.__setattr__(self, "rgb_mean", tuple(float(m) for m in self.rgb_mean))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SpanConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "rgb_mean" in known:
            known["rgb_mean"] = tuple(known["rgb_mean"])
        return cls(**known)

    @property
    def receptive_radius(self) -> int:
        """LR pixels each side that can influence one output pixel: one per chained 3x3 conv."""
        return 3 * self.blocks + 3


class SPAB(nn.Module):
    """Swift parameter-free attention block: three Conv3XC, SiLU, and a sigmoid attention on the residual."""

    def __init__(self, channels: int, deploy: bool = False) -> None:
        super().__init__()
        self.c1_r = Conv3XC(channels, channels, gain=2, deploy=deploy)
        self.c2_r = Conv3XC(channels, channels, gain=2, deploy=deploy)
        self.c3_r = Conv3XC(channels, channels, gain=2, deploy=deploy)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the block output and ``silu(c1(x))`` (what the official in-place SiLU leaves behind)."""
        h1 = F.silu(self.c1_r(x))
        h2 = F.silu(self.c2_r(h1))
        h3 = self.c3_r(h2)
        attention = torch.sigmoid(h3) - 0.5
        return (h3 + x) * attention, h1


class SPAN(nn.Module):
    """SPAN in training form (Conv3XC branches) or deploy form (one 3x3 conv each, ``eval_conv``).

    ``forward_features`` also returns the feature maps that spatial-affinity distillation compares:
    every block output (in order) and the output of ``conv_2``.
    """

    def __init__(self, config: SpanConfig | None = None, deploy: bool = False) -> None:
        super().__init__()
        self.config = config = config or SpanConfig()
        self.deploy = deploy
        c = config.channels
        self.register_buffer("mean", torch.tensor(config.rgb_mean).view(1, -1, 1, 1), persistent=False)
        self.conv_1 = Conv3XC(config.in_channels, c, gain=2, deploy=deploy)
        for i in range(1, config.blocks + 1):
            self.add_module(f"block_{i}", SPAB(c, deploy=deploy))
        self.conv_cat = nn.Conv2d(4 * c, c, 1)
        self.conv_2 = Conv3XC(c, c, gain=2, deploy=deploy)
        self.upsampler = nn.Sequential(
            nn.Conv2d(c, config.out_channels * config.scale**2, 3, padding=1),
            nn.PixelShuffle(config.scale),
        )

    @property
    def blocks(self) -> list[SPAB]:
        return [getattr(self, f"block_{i}") for i in range(1, self.config.blocks + 1)]

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Super-resolve ``x`` and return ``(sr, [block_1 out, ..., block_N out, conv_2 out])``."""
        x = (x - self.mean.to(x.dtype)) * self.config.img_range
        head = self.conv_1(x)
        features: list[torch.Tensor] = []
        out, first_act = head, head
        for block in self.blocks:
            out, first_act = block(out)
            features.append(out)
        tail = self.conv_2(out)
        features.append(tail)
        joined = self.conv_cat(torch.cat([head, tail, features[0], first_act], dim=1))
        return self.upsampler(joined), features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]
