"""Checkpoint I/O: official ``.pth`` files, BasicSR wrappers, and our safetensors format.

Every reader is weights-only: ``torch.load(weights_only=True)`` refuses pickled code, and safetensors holds
no code at all. The architecture is detected from tensor names and shapes (as spandrel does), so a file
needs no side information; our own files also embed a JSON config (arch, form, sizes, LoRA settings) in the
safetensors metadata under ``"dsclora"``.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from dsclora.errors import DscloraError
from dsclora.export import deploy_to_train_form, derived_eval_conv_state
from dsclora.models.dsclora import DSCLoRA, DSCLoRAConfig
from dsclora.models.span import SPAN, SpanConfig
from dsclora.reparam import to_deploy
from dsclora.utils import atomic_write

StateDict = dict[str, torch.Tensor]
Form = Literal["deploy", "train"]
Arch = Literal["span", "dsclora"]

WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net_g")
METADATA_KEY = "dsclora"
TRAIN_STATE_FORMAT = "dsclora-train-state/1"  # written by dsclora.train.loop


@dataclass(frozen=True)
class ModelSpec:
    """What a state dict holds: enough to build the module that loads it strictly."""

    arch: Arch
    form: Form
    span: SpanConfig
    lora: DSCLoRAConfig | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = {"arch": self.arch, "form": self.form, "span": self.span.to_dict()}
        if self.lora is not None:
            data["lora"] = self.lora.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> ModelSpec:
        try:
            lora = DSCLoRAConfig.from_dict(data["lora"]) if data.get("lora") else None
            return cls(data["arch"], data["form"], SpanConfig.from_dict(data["span"]), lora)
        except (KeyError, TypeError, ValueError) as exc:
            raise DscloraError(f"embedded dsclora config is malformed: {exc}") from None

    def build(self) -> SPAN:
        if self.arch == "dsclora":
            return DSCLoRA(self.span, self.lora)
        return SPAN(self.span, deploy=self.form == "deploy")


# --------------------------------------------------------------------------------------------- reading


def _first_sentence(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(". ")[0].rstrip(".")


def _unwrap(obj: object, source: str) -> StateDict:
    """Find the tensor dict inside BasicSR / Lightning / DDP style wrappers; prefer EMA weights."""
    while isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            raise DscloraError(f"{source}: no state dict found (top-level keys: {sorted(obj)[:8]})")
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise DscloraError(f"{source}: not a state dict of tensors")
    state = {str(k): v for k, v in obj.items()}
    for prefix in ("module.", "model.", "net_g."):
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def read_checkpoint(path: str | os.PathLike) -> tuple[StateDict, dict | None]:
    """Read a checkpoint's tensors (and our embedded config, if any) without running any pickled code."""
    path = Path(path)
    if not path.is_file():
        raise DscloraError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise DscloraError(f"checkpoint is empty (0 bytes): {path}")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise DscloraError(f"{path}: not a readable safetensors file ({exc})") from None
        config = None
        if METADATA_KEY in metadata:
            try:
                config = json.loads(metadata[METADATA_KEY])
            except json.JSONDecodeError:
                raise DscloraError(f"{path}: embedded dsclora config is not valid JSON") from None
        return state, config
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; the error below says enough
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = (
            str(exc).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
            if "WeightsUnpickler" in str(exc)
            else ""
        )
        reason = f": {detail}" if detail else ""
        raise DscloraError(f"{path}: refused to load: it holds pickled objects other than tensors{reason}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, AttributeError) as exc:
        raise DscloraError(f"{path}: not a readable PyTorch checkpoint ({_first_sentence(exc)})") from None
    if isinstance(obj, Mapping) and obj.get("format") == TRAIN_STATE_FORMAT:
        # a `dsclora train` checkpoint (latest.pt / best.pt): its EMA weights and its exact config
        weights = obj.get("ema") or obj["model"]
        return dict(weights), obj["model_spec"]
    return _unwrap(obj, str(path)), None


# --------------------------------------------------------------------------------------------- detection

_BLOCK = re.compile(r"^block_(\d+)\.")


def _shape(state: StateDict, key: str) -> tuple[int, ...] | None:
    tensor = state.get(key)
    return tuple(tensor.shape) if tensor is not None else None


def _explain_unsupported(state: StateDict) -> str:
    keys = set(state)
    if "conv_near.weight" in keys:
        return "looks like SPAN-F (conv_near, no conv_1), which is not supported"
    if any(k.startswith(("teacher_block_seq.", "tea_")) for k in keys):
        return "looks like ESPAN (teacher blocks), which is not supported"
    if any(k.endswith(".weight") and k.startswith(("body.", "layers.", "conv_first")) for k in keys):
        return "not a SPAN-family checkpoint"
    return "not a SPAN / DSCLoRA checkpoint"


def detect(state: StateDict, source: str = "checkpoint") -> ModelSpec:
    """Work out architecture, form and sizes from tensor names and shapes alone."""
    conv1 = _shape(state, "conv_1.eval_conv.weight") or _shape(state, "conv_1.sk.weight")
    cat = _shape(state, "conv_cat.weight")
    up = _shape(state, "upsampler.0.weight")
    if conv1 is None or cat is None or up is None:
        raise DscloraError(f"{source}: {_explain_unsupported(state)}")
    train = "conv_1.sk.weight" in state
    channels, in_channels = conv1[0], conv1[1]
    if _shape(state, "conv_1.eval_conv.weight") not in (None, (channels, in_channels, 3, 3)):
        raise DscloraError(f"{source}: conv_1 is not a 3x3 conv; {_explain_unsupported(state)}")
    if cat != (channels, 4 * channels, 1, 1):
        raise DscloraError(
            f"{source}: conv_cat has shape {cat}, SPAN needs ({channels}, {4 * channels}, 1, 1): "
            "a SPAN variant that is not supported"
        )
    blocks = {int(m.group(1)) for k in state if (m := _BLOCK.match(k))}
    if not blocks or blocks != set(range(1, max(blocks) + 1)):
        raise DscloraError(f"{source}: block numbering {sorted(blocks)} is not 1..N")
    out_total = up[0]
    # PixelShuffle hides the split of out_channels * scale²; like spandrel, prefer out == in channels.
    candidates = [(s, out_total // s**2) for s in range(1, 9) if out_total % s**2 == 0]
    scale, out_channels = next(
        ((s, c) for s, c in candidates if c == in_channels), max(candidates, key=lambda sc: sc[0])
    )
    span = SpanConfig(
        channels=channels,
        blocks=max(blocks),
        scale=scale,
        in_channels=in_channels,
        out_channels=out_channels,
    )
    lora_keys = [k for k in state if k.endswith(".lora_A")]
    if lora_keys:
        if train:
            raise DscloraError(f"{source}: LoRA factors on a training-form SPAN are not supported")
        block_a = state.get("block_1.c1_r.eval_conv.lora_A")
        tail_a = state.get("conv_2.eval_conv.lora_A")
        if block_a is None or tail_a is None:
            raise DscloraError(f"{source}: LoRA factors are not in the DSCLoRA placement")
        block_rank, tail_rank = block_a.shape[0] // 3, tail_a.shape[0] // 3
        # alpha is not recoverable from shapes; keep the paper's alpha / rank = 2 unless a config says more.
        lora = DSCLoRAConfig(block_rank, 2.0 * block_rank, tail_rank, 2.0 * tail_rank)
        return ModelSpec("dsclora", "deploy", span, lora)
    return ModelSpec("span", "train" if train else "deploy", span)


# --------------------------------------------------------------------------------------------- loading


def _strip_derived(state: StateDict, spec: ModelSpec) -> StateDict:
    """BasicSR training checkpoints also store ``eval_conv`` (derived from the branches): drop it."""
    if spec.form == "train":
        return {k: v for k, v in state.items() if ".eval_conv." not in k and k != "no_norm"}
    return state


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[SPAN, ModelSpec]:
    """Build the right module for a checkpoint and load it strictly; returns the model in eval mode."""
    state, config = read_checkpoint(path)
    spec = detect(state, str(path))
    if config is not None:
        embedded = ModelSpec.from_dict(config)
        if (embedded.arch, embedded.form, embedded.span.channels) != (spec.arch, spec.form, spec.span.channels):
            raise DscloraError(f"{path}: embedded config does not match the tensors it describes")
        spec = embedded
    model = spec.build()
    try:
        model.load_state_dict(_strip_derived(state, spec), strict=True)
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()
        raise DscloraError(
            f"{path}: tensors do not fit {spec.arch} ({detail[1] if len(detail) > 1 else detail[0]})"
        ) from None
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise DscloraError(f"{path}: tensor {name} holds NaN or inf")
    return model.to(device).eval(), spec


# --------------------------------------------------------------------------------------------- saving


def spec_of(model: SPAN) -> ModelSpec:
    if isinstance(model, DSCLoRA):
        return ModelSpec("dsclora", "deploy", model.config, model.lora_config)
    return ModelSpec("span", "deploy" if model.deploy else "train", model.config)


def save_model(
    model: SPAN,
    path: str | os.PathLike,
    form: Form | None = None,
    file_format: Literal["safetensors", "pth"] | None = None,
) -> ModelSpec:
    """Write ``model`` atomically; ``form="deploy"`` collapses / merges first.

    safetensors files embed the JSON config; ``.pth`` files are plain state dicts like the official ones.
    """
    path = Path(path)
    file_format = file_format or ("pth" if path.suffix in (".pth", ".pt") else "safetensors")
    if form == "deploy" and (isinstance(model, DSCLoRA) or not model.deploy):
        model = to_deploy(model)
    elif form == "train" and model.deploy:
        model = deploy_to_train_form(model)
    spec = spec_of(model)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if spec.form == "train":
        state.update(derived_eval_conv_state(model))  # what BasicSR and spandrel files also hold
    if file_format == "safetensors":
        metadata = {METADATA_KEY: json.dumps(spec.to_dict()), "format": "pt"}
        with atomic_write(path) as tmp:
            save_file(state, str(tmp), metadata=metadata)
    elif file_format == "pth":
        with atomic_write(path) as tmp:
            torch.save(state, str(tmp))
    else:
        raise DscloraError(f"unknown checkpoint format {file_format!r} (use safetensors or pth)")
    return spec
