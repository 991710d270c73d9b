"""SPAN, dsclora's first-class network, and everything specific to it, reached through ``span_hooks``.

- ``network``: SPAN and its blocks; ``conv3xc``: the re-parameterisable conv; ``forms``: training <-> deploy form;
- ``checkpoint``: SPAN detection from a state dict; ``fused``: FusedSPAN, the faster inference form;
- ``fused_bf16``: BF16SPAN, FusedSPAN in bf16 with fp32 where it pays (``--precision bf16-accurate``);
- ``padding``: exact channel padding for GPUs; ``ntire``: the NTIRE kit module template;
- the DSCLoRA paper's ConvLoRA placement (``paper_rules``) and distillation layers (``feature_layers``).
"""

from __future__ import annotations

from dsclora.models.adapters import AdapterSpec, Rule
from dsclora.models.descriptor import ArchHooks
from dsclora.models.span.conv3xc import Conv3XC
from dsclora.models.span.forms import to_deploy, to_train_form
from dsclora.models.span.fused import FusedSPAN
from dsclora.models.span.fused_bf16 import BF16SPAN
from dsclora.models.span.network import SPAB, SPAN, SpanConfig
from dsclora.models.span.ntire import ntire_module
from dsclora.models.span.padding import pad_channels

ARCH = "span"
# the generic bf16-accurate policy (the unfused ``torch`` back-end) keeps in fp32 the convs that read the
# x255-scaled input (conv_1, and head_proj in FusedSPAN) and the upsampler that writes the output.
FP32_LAYERS = ("conv_1", "head_proj", "upsampler")


def paper_rules(
    block_rank: int = 2, block_alpha: float = 4.0, tail_rank: int = 8, tail_alpha: float = 16.0, dropout: float = 0.0
) -> list[Rule]:
    """DSCLoRA's placement (Chai et al., arXiv 2504.11271; ``docs/method.md`` §2, confirmed by diffing the
    released weights against SPAN-tiny): the three convs of every block (a SPAB whose convs carry ConvLoRA is the
    paper's *SConvLB*), ``conv_2`` and the upsampler's conv; ``conv_1``, ``conv_cat`` and all biases stay frozen.
    Default ranks are the authors' code comments: r = 2, α = 4 in blocks; r = 8, α = 16 in the tail."""
    block = AdapterSpec(block_rank, block_alpha, dropout)
    tail = AdapterSpec(tail_rank, tail_alpha, dropout)
    return [("block_*.c?_r.eval_conv", block), ("conv_2.eval_conv", tail), ("upsampler.0", tail)]


def feature_layers(config: SpanConfig) -> tuple[str, ...]:
    """The maps the paper's spatial-affinity term compares: every block's output and ``conv_2``'s."""
    return (*(f"block_{i}" for i in range(1, config.blocks + 1)), "conv_2")


def span_hooks(config: SpanConfig) -> ArchHooks:
    """What a SPAN of this config offers through its descriptor."""
    return ArchHooks(
        fast_form=FusedSPAN.from_span,
        pad_channels=lambda model, multiple: pad_channels(to_deploy(model), multiple),
        accurate_bf16_form=BF16SPAN.from_fused,
        train_form=to_train_form,
        ntire_module=lambda model, name: ntire_module(to_deploy(model), name),
        adapter_rules=paper_rules,
        feature_layers=feature_layers(config),
        fp32_layers=FP32_LAYERS,
        size_tags=(f"{config.channels}nf", f"{config.blocks}nb"),
    )


__all__ = [
    "ARCH",
    "BF16SPAN",
    "FP32_LAYERS",
    "SPAB",
    "SPAN",
    "Conv3XC",
    "FusedSPAN",
    "SpanConfig",
    "feature_layers",
    "paper_rules",
    "span_hooks",
    "to_deploy",
    "to_train_form",
]
