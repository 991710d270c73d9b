"""SPAN from official ``.pth`` files, BasicSR training files and our safetensors (detected from tensor shapes,
``models.span.checkpoint``), and SPAN saved back in those formats.

Our safetensors files embed ``{"arch": "span", "form": "deploy" | "train", "span": {SpanConfig}}``; files written
by dsclora before the any-model redesign may say ``"arch": "dsclora"`` and carry ConvLoRA factors with their
ranks and α under ``"lora"``: they load as SPAN with those adapters, merged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from torch import nn

from dsclora.errors import DscloraError
from dsclora.models.adapters import Rule, inject, merge
from dsclora.models.descriptor import ModelDescriptor
from dsclora.models.span import ARCH, SPAN, paper_rules, span_hooks, to_train_form
from dsclora.models.span.checkpoint import base_state, detect
from dsclora.models.span.forms import derived_eval_conv_state
from dsclora.models.span.network import SpanConfig
from dsclora.weights.checkpoints import StateDict, write_state_dict


def _legacy_rules(embedded: Mapping, source: str) -> list[Rule]:
    """The adapters of a pre-redesign DSCLoRA file: the paper's placement with the ranks and α it recorded."""
    lora = embedded.get("lora")
    if not isinstance(lora, Mapping):
        raise DscloraError(f"{source}: holds ConvLoRA factors but no record of their ranks and α")
    try:
        return paper_rules(
            int(lora["block_rank"]), float(lora["block_alpha"]), int(lora["tail_rank"]), float(lora["tail_alpha"])
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DscloraError(f"{source}: its ConvLoRA record is malformed ({exc})") from None


def build(state: StateDict, embedded: Mapping | None, source: str) -> SPAN | None:
    """The SPAN these tensors hold, loaded strictly (adapters and training form as stored); None if no SPAN."""
    span_config = embedded.get("span") if isinstance(embedded, Mapping) else None
    if embedded is not None and embedded.get("arch") not in (ARCH, "dsclora"):
        return None
    layout = detect(state, source, span_config)
    if layout is None:
        return None
    model = layout.build()
    adapted = any(k.endswith(".lora_A") for k in state)
    if adapted:
        if layout.train_form:
            raise DscloraError(f"{source}: ConvLoRA factors on a training-form SPAN are not supported")
        try:
            inject(model, _legacy_rules(embedded or {}, source))
        except ValueError as exc:
            raise DscloraError(f"{source}: {exc}") from None
    try:
        model.load_state_dict(base_state(state, layout), strict=True)
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()
        raise DscloraError(
            f"{source}: tensors do not fit a SPAN ({detail[1] if len(detail) > 1 else detail[0]})"
        ) from None
    return model


def source_of(model: SPAN) -> dict:
    """How to build ``model``'s architecture again in deploy form (what a training state records)."""
    return {"kind": ARCH, "config": model.config.to_dict()}


def rebuild(source: Mapping, label: str) -> ModelDescriptor:
    """A SPAN of the recorded architecture, its weights freshly initialised (a training state then loads them)."""
    try:
        model = SPAN(SpanConfig.from_dict(dict(source["config"])), deploy=True)
    except (KeyError, TypeError, ValueError) as exc:
        raise DscloraError(f"{label}: its recorded SPAN config is malformed ({exc})") from None
    return descriptor(model, label, None, "")


def save(model: nn.Module, path: Path, train_form: bool = False) -> list[Path]:
    """Write a SPAN (merged first) as our safetensors with its config, or as an official-style ``.pth``;
    ``train_form``: Conv3XC branches that collapse exactly to it, with the derived ``eval_conv`` beside them as
    BasicSR and spandrel files carry."""
    deployed = merge(model)
    written = to_train_form(deployed) if train_form else deployed
    state = written.state_dict()
    if train_form:
        state |= derived_eval_conv_state(written)
    metadata = {"arch": ARCH, "form": "train" if train_form else "deploy", "span": written.config.to_dict()}
    return [write_state_dict(state, path, metadata)]


def descriptor(model: SPAN, label: str, path: Path | None, weights_sha256: str) -> ModelDescriptor:
    """A SPAN's descriptor: its exact receptive radius, and every SPAN hook."""
    config = model.config
    return ModelDescriptor(
        module=model,
        arch=ARCH,
        scale=config.scale,
        label=label,
        source=source_of(model),
        identity=hashlib.sha256(f"span|{weights_sha256}".encode()).hexdigest(),
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        receptive_radius=3 * config.blocks + 3,  # one LR pixel per chained 3x3 conv
        path=path,
        saver=save,
        suffix=".safetensors",
        hooks=span_hooks(config),
    )
