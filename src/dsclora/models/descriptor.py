"""The model descriptor: one loaded network with everything the rest of dsclora needs to know about it.

Every command works on a ``ModelDescriptor`` (spandrel's idea, written here for our needs): the module, its
scale and channels, the input range it expects (1: RGB in [0, 1]; 255: RGB in [0, 255]), the size its input's
height and width must be a multiple of, its receptive radius when it is known, the architecture's id, how it
was built (so a training state can rebuild it), where its weights came from, how to save it in its own format,
and what its architecture offers beyond running (``ArchHooks``: a faster inference form, exact channel padding,
a training form, an NTIRE kit module, an adapter preset, default distillation layers).

``runnable()`` is the network as every caller sees it: RGB in [0, 1] in, [0, 1] out, any size. Input range and
padding live here and nowhere else. Nothing in this module knows an architecture.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from dsclora.models.adapters import Rule


class Saver(Protocol):
    """Writes a network of one architecture in that architecture's own format; returns the files written, the
    one ``--weights`` loads first (a spec-file network: its spec, then the state dict it names).
    ``train_form=True`` asks for the re-parameterisable training form (only where ``hooks.train_form`` exists)."""

    def __call__(self, module: nn.Module, path: Path, train_form: bool = False) -> list[Path]: ...


@dataclass(frozen=True)
class ArchHooks:
    """What an architecture offers besides its forward; ``None`` (or empty) where it offers nothing.

    - ``fast_form(module)``: the same function regrouped for inference (e.g. SPAN's FusedSPAN);
    - ``pad_channels(module, multiple)``: the same function with its feature width rounded up (exact);
    - ``train_form(module, trainable=False)``: a re-parameterisable training form that collapses to the same
      network (bit for bit; ``trainable``: initialised so that every extra parameter learns);
    - ``ntire_module(module, class_name)``: a self-contained module file for the NTIRE kit defining
      ``class_name`` (buildable without arguments), and the state dict that class loads strictly;
    - ``adapter_rules()``: the architecture's default ConvLoRA placement;
    - ``feature_layers``: module names whose outputs spatial-affinity distillation compares by default;
    - ``accurate_bf16_form(fast_module)``: the architecture's own ``bf16-accurate`` form of its fast form (SPAN:
      BF16SPAN, bf16 convs with fp32 where bf16 would cost accuracy); without it, a generic policy is used;
    - ``fp32_layers``: name prefixes of layers that reduced-precision paths keep in fp32 (input- and output-side);
    - ``size_tags``: the architecture's size in OpenModelDB's words (e.g. ``26nf``, ``6nb``).
    """

    fast_form: Callable[[nn.Module], nn.Module] | None = None
    pad_channels: Callable[[nn.Module, int], nn.Module] | None = None
    accurate_bf16_form: Callable[[nn.Module], nn.Module] | None = None
    train_form: Callable[..., nn.Module] | None = None
    ntire_module: Callable[[nn.Module, str], tuple[str, dict[str, torch.Tensor]]] | None = None
    adapter_rules: Callable[[], list[Rule]] | None = None
    feature_layers: tuple[str, ...] = ()
    fp32_layers: tuple[str, ...] = ()
    size_tags: tuple[str, ...] = ()


class ImageInterface(nn.Module):
    """Wraps a network so that it takes and gives RGB in [0, 1] at any size.

    The input is padded on the right and bottom to a multiple of ``size_multiple`` (reflected, then replicated
    where the image is smaller than the padding, as spandrel does), scaled to ``input_range``, run, scaled back,
    and the output cropped to ``scale`` times the input.
    """

    def __init__(self, net: nn.Module, scale: int, input_range: float = 1.0, size_multiple: int = 1) -> None:
        super().__init__()
        self.net, self.scale, self.input_range, self.size_multiple = net, scale, input_range, size_multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = self.size_multiple
        pad_h, pad_w = -h % m, -w % m
        if pad_h or pad_w:
            reflect_h, reflect_w = min(pad_h, h - 1), min(pad_w, w - 1)
            x = F.pad(x, (0, reflect_w, 0, reflect_h), mode="reflect")
            x = F.pad(x, (0, pad_w - reflect_w, 0, pad_h - reflect_h), mode="replicate")
        if self.input_range != 1.0:
            x = x * self.input_range
        out = self.net(x)
        if self.input_range != 1.0:
            out = out / self.input_range
        return out[..., : h * self.scale, : w * self.scale] if pad_h or pad_w else out


@dataclass
class ModelDescriptor:
    """One loaded network (see the module docstring). ``module`` is the network exactly as its code defines it."""

    module: nn.Module
    arch: str  # "span", a spec file's class name, or spandrel's architecture id
    scale: int
    label: str  # as the user named it (file, registry name, spec file)
    source: dict  # how it was built: what ``weights.load.rebuild`` takes to build it again
    identity: str  # weights and code digest: what caches of its outputs are keyed by
    in_channels: int = 3
    out_channels: int = 3
    input_range: float = 1.0
    size_multiple: int = 1
    receptive_radius: int | None = None  # LR pixels each side that reach an output pixel; None: not known
    path: Path | None = None  # the weights file
    saver: Saver | None = None  # writes a module of this architecture in its own format
    suffix: str = ".pth"  # of that format's files
    hooks: ArchHooks = field(default_factory=ArchHooks)

    def runnable(self, module: nn.Module | None = None) -> nn.Module:
        """``module`` (default: this descriptor's) with input range and padding applied: [0, 1] in and out."""
        net = self.module if module is None else module
        if self.input_range == 1.0 and self.size_multiple == 1:
            return net
        return ImageInterface(net, self.scale, self.input_range, self.size_multiple)

    def with_module(self, module: nn.Module) -> ModelDescriptor:
        """The same descriptor around another module of this architecture (a trained or merged copy)."""
        return dataclasses.replace(self, module=module)
