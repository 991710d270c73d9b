"""SPAN: Swift Parameter-free Attention Network (Wan et al., CVPRW 2024; NTIRE 2024 ESR winner).

Facts this file follows (``docs/method.md`` §1, checked against the official checkpoints):
- input in [0, 1] is shifted by the DIV2K RGB mean and scaled by 255 inside; the output is neither
  de-normalised nor clamped. ``norm=False`` (spandrel / traiNNer-redux ``SPAN(norm=False)``, saved with a
  ``no_norm`` tensor) skips both: the network then sees the [0, 1] input as it is;
- each SPAB returns ``silu(c1(x))`` as well as its output: the official block applies SiLU in place, so the
  tensor that ``conv_cat`` receives from the last block has already been through SiLU;
- ``conv_cat`` joins [conv_1 out, conv_2 out, block 1 out, last block's silu(c1)], then a 3x3 conv and
  PixelShuffle upsample. There is no global skip.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from dsclora.models.span.conv3xc import Conv3XC

DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)
MAX_SIZE = {"channels": 1024, "blocks": 64, "in_channels": 4, "out_channels": 4}


def _finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class SpanConfig:
    """Hyperparameters of a SPAN; everything else is detected from a checkpoint's tensor shapes."""

    channels: int = field(default=48, metadata={"help": "feature width C (48 SPAN, 28 ch28, 26 SPAN-tiny)"})
    blocks: int = field(default=6, metadata={"help": "number of SPABs"})
    scale: int = field(default=4, metadata={"help": "upscaling factor (1-8)"})
    in_channels: int = field(default=3, metadata={"help": "image channels in"})
    out_channels: int = field(default=3, metadata={"help": "image channels out"})
    img_range: float = field(default=255.0, metadata={"help": "the input is scaled by this after the mean shift"})
    rgb_mean: tuple[float, ...] | None = field(
        default=None,
        metadata={
            "help": "mean subtracted from the [0, 1] input, one value per channel (null: DIV2K's RGB mean; 0.5 each for other channel counts)"
        },
    )
    norm: bool = field(
        default=True, metadata={"help": "shift by rgb_mean and scale by img_range inside (False: no_norm)"}
    )

    def __post_init__(self) -> None:
        sizes = {"channels": self.channels, "blocks": self.blocks, "in_channels": self.in_channels}
        sizes["out_channels"] = self.out_channels
        for name, value in sizes.items():  # bounds keep a hostile config from allocating gigabytes
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIZE[name]:
                raise ValueError(f"SpanConfig.{name} must be a whole number in 1..{MAX_SIZE[name]}, got {value!r}")
        if isinstance(self.scale, bool) or not isinstance(self.scale, int) or not 1 <= self.scale <= 8:
            raise ValueError(f"SpanConfig.scale must be a whole number in 1..8, got {self.scale!r}")
        if not _finite_number(self.img_range) or self.img_range <= 0:
            raise ValueError(f"SpanConfig.img_range must be a positive number, got {self.img_range!r}")
        if not isinstance(self.norm, bool):
            raise ValueError(f"SpanConfig.norm must be true or false, got {self.norm!r}")
        mean = self.rgb_mean
        if mean is None:  # the default: DIV2K's mean for RGB, mid-grey for any other channel count
            mean = DIV2K_RGB_MEAN if self.in_channels == 3 else (0.5,) * self.in_channels
        if not isinstance(mean, list | tuple) or not all(_finite_number(m) for m in mean):
            raise ValueError(f"SpanConfig.rgb_mean must be a list of numbers, got {mean!r}")
        if len(mean) != self.in_channels or not all(0 <= m <= 1 for m in mean):
            # A given mean is used as given: a wrong one would silently shift every output.
            raise ValueError(
                f"SpanConfig.rgb_mean must be {self.in_channels} values in [0, 1] (one per input channel), got {mean!r}"
            )
        object.__setattr__(self, "img_range", float(self.img_range))
        object.__setattr__(self, "rgb_mean", tuple(float(m) for m in mean))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SpanConfig:
        """Only known keys are read; every value is type- and range-checked (``ValueError`` otherwise)."""
        if not isinstance(data, dict):
            raise ValueError(f"a SPAN config must be a mapping, got {type(data).__name__}")
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

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
    """SPAN in training form (Conv3XC branches) or deploy form (one 3x3 conv each, ``eval_conv``)."""

    def __init__(self, config: SpanConfig | None = None, deploy: bool = False) -> None:
        super().__init__()
        self.config = config = config or SpanConfig()
        c = config.channels
        self.register_buffer("mean", torch.tensor(config.rgb_mean).view(1, -1, 1, 1), persistent=False)
        if not config.norm:  # the marker spandrel and traiNNer-redux save for SPAN(norm=False)
            self.register_buffer("no_norm", torch.zeros(1))
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
    def deploy(self) -> bool:
        """Whether every Conv3XC is in its one-conv form (the released checkpoints' layout)."""
        return all(m.deploy for m in self.modules() if isinstance(m, Conv3XC))

    @property
    def blocks(self) -> list[SPAB]:
        return [getattr(self, f"block_{i}") for i in range(1, self.config.blocks + 1)]

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """What the first conv sees: ``(x - mean) · img_range``, or ``x`` itself for ``norm=False``."""
        return (x - self.mean.to(x.dtype)) * self.config.img_range if self.config.norm else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head = self.conv_1(self.normalise(x))
        out, first_act = head, head
        first_block = None
        for block in self.blocks:
            out, first_act = block(out)
            first_block = out if first_block is None else first_block
        tail = self.conv_2(out)
        joined = self.conv_cat(torch.cat([head, tail, first_block, first_act], dim=1))
        return self.upsampler(joined)
