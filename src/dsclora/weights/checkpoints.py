"""Checkpoint I/O, the only reader and writer of model files: official ``.pth`` files, BasicSR wrappers, our
safetensors format, and ``dsclora train``'s training states (``latest.pt`` / ``best.pt``).

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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dsclora.errors import DscloraError
from dsclora.fs import atomic_write
from dsclora.models.dsclora import DSCLoRA, DSCLoRAConfig
from dsclora.models.forms import Form, convert, derived_eval_conv_state
from dsclora.models.span import SPAN, SpanConfig

StateDict = dict[str, torch.Tensor]
Arch = Literal["span", "dsclora"]
FileFormat = Literal["safetensors", "pth"]

WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net_g")
METADATA_KEY = "dsclora"
TRAIN_STATE_FORMAT = "dsclora-train-state/1"
SUFFIXES: dict[str, FileFormat] = {".safetensors": "safetensors", ".pth": "pth", ".pt": "pth"}
EXPECTED = "a SPAN / DSCLoRA checkpoint (.pth, .pt or .safetensors)"


@dataclass(frozen=True)
class ModelSpec:
    """What a state dict holds: enough to build the module that loads it strictly."""

    arch: Arch
    form: Form
    span: SpanConfig
    lora: DSCLoRAConfig | None = None

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


def read_checkpoint(path: str | os.PathLike, prefer_ema: bool = True) -> tuple[StateDict, dict | None]:
    """Read a checkpoint's tensors (and our embedded config, if any) without running any pickled code.

    A training state gives its EMA weights unless ``prefer_ema`` is False (or it has none).
    """
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
        except Exception as exc:  # the library raises several kinds on bad bytes; all mean the same to a user
            raise DscloraError(f"{path}: not a readable safetensors file ({_first_sentence(exc)})") from None
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
    except Exception as exc:  # text, random bytes, other pickles: torch raises a dozen kinds, none is a bug of ours
        raise DscloraError(f"{path}: not {EXPECTED} ({type(exc).__name__}: {_first_sentence(exc)})") from None
    if isinstance(obj, Mapping) and obj.get("format") == TRAIN_STATE_FORMAT:
        # a `dsclora train` checkpoint (latest.pt / best.pt): its EMA weights and its exact config
        weights = (obj.get("ema") if prefer_ema else None) or obj["model"]
        return dict(weights), obj["model_spec"]
    return _unwrap(obj, str(path)), None


def read_train_state(path: str | os.PathLike) -> dict:
    """The whole training state ``dsclora train`` wrote (model, EMA, optimiser, step, RNG, config)."""
    path = Path(path)
    if not path.is_file():
        raise DscloraError(f"training checkpoint not found: {path}")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file is the user's input problem here
        raise DscloraError(f"{path}: not a readable training checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != TRAIN_STATE_FORMAT:
        raise DscloraError(f"{path}: not a dsclora training checkpoint (latest.pt / best.pt)")
    return state


def write_train_state(path: str | os.PathLike, state: dict) -> None:
    """Write a training state atomically (a kill mid-write leaves the previous file)."""
    with atomic_write(path) as tmp:
        torch.save({"format": TRAIN_STATE_FORMAT, **state}, tmp)


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


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu", prefer_ema: bool = True
) -> tuple[SPAN, ModelSpec]:
    """Build the right module for a checkpoint and load it strictly; returns the model in eval mode."""
    state, config = read_checkpoint(path, prefer_ema)
    try:
        spec = detect(state, str(path))
    except (IndexError, TypeError, ValueError, AttributeError) as exc:  # tensors of shapes no SPAN has
        raise DscloraError(f"{path}: not {EXPECTED} ({_first_sentence(exc)})") from None
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


def file_format_of(path: str | os.PathLike, requested: FileFormat | None = None) -> FileFormat:
    """The file format for ``path``: its suffix decides; ``requested`` must agree with it."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        hint = "; for ONNX use `dsclora export --format onnx`" if suffix == ".onnx" else ""
        raise DscloraError(f"{path}: unknown model file suffix {suffix or '(none)'!r} (use .safetensors or .pth){hint}")
    if requested is not None and requested != SUFFIXES[suffix]:
        raise DscloraError(f"{path}: the suffix says {SUFFIXES[suffix]}, but --format {requested} was asked for")
    return SUFFIXES[suffix]


def save_model(
    model: SPAN, path: str | os.PathLike, form: Form | None = None, file_format: FileFormat | None = None
) -> ModelSpec:
    """Write ``model`` atomically, converted to ``form`` first if it is in another (checked by ``forms.convert``).

    safetensors files embed the JSON config; ``.pth`` files are plain state dicts like the official ones.
    """
    file_format = file_format_of(path, file_format)
    current: Form = "deploy" if model.deploy and not isinstance(model, DSCLoRA) else "train"
    if form is not None and (form != current or isinstance(model, DSCLoRA)):
        model, _ = convert(model, form)
    spec = spec_of(model)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if spec.form == "train":
        state.update(derived_eval_conv_state(model))  # what BasicSR and spandrel files also hold
    with atomic_write(path) as tmp:
        if file_format == "safetensors":
            save_file(state, str(tmp), metadata={METADATA_KEY: json.dumps(spec.to_dict()), "format": "pt"})
        else:
            torch.save(state, str(tmp))
    return spec
