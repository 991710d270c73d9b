"""A SPAN from a state dict alone: architecture, form and sizes read off tensor names and shapes (as spandrel
detects architectures), every size checked against the tensors before anything is allocated.

``detect`` answers three ways: a ``SpanLayout`` (this is a SPAN we build), ``None`` (not a SPAN at all: another
loader may know it), or a ``DscloraError`` naming the SPAN variant we recognise but do not support (SPAN-F,
ESPAN, NTIRE 2025 team 46), so the user learns why rather than "unknown file".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from dsclora.errors import DscloraError
from dsclora.models.span.network import SPAN, SpanConfig

StateDict = Mapping[str, torch.Tensor]
_BLOCK = re.compile(r"^block_(\d+)\.")


@dataclass(frozen=True)
class SpanLayout:
    """What a SPAN state dict holds: its config and whether its Conv3XC are in training form."""

    config: SpanConfig
    train_form: bool

    def build(self) -> SPAN:
        return SPAN(self.config, deploy=not self.train_form)


def _shape(state: StateDict, key: str) -> tuple[int, ...] | None:
    tensor = state.get(key)
    return tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else None


def _unsupported_variant(state: StateDict) -> str | None:
    keys = set(state)
    if "conv_near.weight" in keys:
        return "looks like SPAN-F (conv_near, no conv_1), which is not supported"
    if any(k.startswith(("teacher_block_seq.", "tea_")) for k in keys):
        return "looks like ESPAN (teacher blocks), which is not supported"
    return None


def detect(state: StateDict, source: str = "checkpoint", embedded: Mapping | None = None) -> SpanLayout | None:
    """The SPAN this state dict holds, or None if it is no SPAN; ``embedded`` is our files' JSON config.

    The embedded config may only add what shapes cannot tell (input range, mean, norm); sizes must agree with
    the tensors, and every value is type- and range-checked, so a hostile config can neither allocate a
    billion blocks nor build a network that computes garbage.
    """
    variant = _unsupported_variant(state)
    if variant:
        raise DscloraError(f"{source}: {variant}")
    conv1 = _shape(state, "conv_1.eval_conv.weight") or _shape(state, "conv_1.sk.weight")
    cat = _shape(state, "conv_cat.weight")
    up = _shape(state, "upsampler.0.weight")
    if conv1 is None or cat is None or up is None:
        return None
    train = "conv_1.sk.weight" in state
    not_float = next((k for k, v in state.items() if not (isinstance(v, torch.Tensor) and v.is_floating_point())), None)
    if not_float is not None:
        raise DscloraError(f"{source}: tensor {not_float} is not floating point; a SPAN holds float weights only")
    if len(conv1) != 4 or len(cat) != 4 or len(up) != 4:
        raise DscloraError(f"{source}: SPAN tensors of unexpected rank (conv_1 {conv1}, conv_cat {cat})")
    channels, in_channels = conv1[0], conv1[1]
    if _shape(state, "conv_1.eval_conv.weight") not in (None, (channels, in_channels, 3, 3)):
        raise DscloraError(f"{source}: conv_1 is not a 3x3 conv; not a supported SPAN")
    if cat != (channels, 4 * channels, 1, 1):
        raise DscloraError(
            f"{source}: conv_cat has shape {cat}, SPAN needs ({channels}, {4 * channels}, 1, 1): "
            "a SPAN variant that is not supported"
        )
    blocks = {int(m.group(1)) for k in state if (m := _BLOCK.match(k))}
    if not blocks or blocks != set(range(1, max(blocks) + 1)):
        raise DscloraError(f"{source}: block numbering {sorted(blocks)[:8]} is not 1..N")
    out_total = up[0]
    # PixelShuffle hides the split of out_channels * scale²; like spandrel, prefer out == in channels.
    candidates = [(s, out_total // s**2) for s in range(1, 9) if out_total % s**2 == 0]
    scale, out_channels = next(((s, c) for s, c in candidates if c == in_channels), max(candidates))
    sizes = {"channels": channels, "blocks": max(blocks), "scale": scale}
    sizes |= {"in_channels": in_channels, "out_channels": out_channels}
    extra = {"norm": "no_norm" not in state}
    if embedded is not None:
        if not isinstance(embedded, Mapping):
            raise DscloraError(f"{source}: embedded SPAN config must be a JSON object")
        for key, value in sizes.items():
            if key in embedded and embedded[key] != value:
                raise DscloraError(f"{source}: embedded config says {key}={embedded[key]!r}, the tensors say {value}")
        extra |= {k: embedded[k] for k in ("img_range", "rgb_mean", "norm") if k in embedded}
        if extra["norm"] != ("no_norm" not in state):
            raise DscloraError(f"{source}: embedded config's norm does not match the file's no_norm tensor")
    try:
        config = SpanConfig(**sizes, **extra)
    except (TypeError, ValueError) as exc:
        raise DscloraError(f"{source}: {exc}") from None
    return SpanLayout(config, train)


def base_state(state: StateDict, layout: SpanLayout) -> dict[str, torch.Tensor]:
    """The tensors a ``layout.build()`` SPAN loads strictly (plus any adapter factors): BasicSR training files
    also store the derived ``eval_conv`` beside the branches, which is dropped here."""
    if layout.train_form:
        return {k: v for k, v in state.items() if ".eval_conv." not in k}
    return dict(state)
