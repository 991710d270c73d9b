"""Typed training configuration: YAML in, dataclasses out, every key and type checked.

A recipe is a YAML mapping with the sections below; ``key=value`` overrides use dotted paths
(``optim.lr=1e-4``, ``data.train=[a,b]``) and YAML syntax for values. Unknown keys, wrong types and missing
required values are errors that name the key, so a typo cannot silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from dsclora.errors import DscloraError

DEFAULT_AD_LAYERS = ["block_1", "block_2", "block_3", "block_4", "block_5", "block_6", "conv_2"]


@dataclass
class ModelConfig:
    """What trains. ``dsclora``: ConvLoRA student on a pre-trained SPAN ``base`` (also the frozen teacher).
    ``span``: a SPAN, from scratch (``init: null``) or initialised from ``init``, every weight trainable."""

    arch: Literal["dsclora", "span"] = "dsclora"
    base: str | None = None  # dsclora: weights name or path of the pre-trained SPAN
    init: str | None = None  # span: optional weights to start from
    form: Literal["train", "deploy"] = "train"  # span: Conv3XC branches (train) or plain convs (deploy)
    channels: int = 48
    blocks: int = 6
    scale: int = 4
    block_rank: int = 2
    block_alpha: float = 4.0
    tail_rank: int = 8
    tail_alpha: float = 16.0
    lora_dropout: float = 0.0


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=list)  # HR folders (images directly inside, or in HR/)
    val: list[str] = field(default_factory=list)  # benchmark folders (any layout `dsclora eval` reads)
    patch: int = 64  # LR patch side; HR patches are patch * scale
    batch: int = 16  # global batch (split evenly across DDP ranks)
    workers: int = 2
    augment: bool = True  # random flips and 90° rotations
    cache_in_memory: bool = True  # keep decoded HR and LR images in RAM
    val_max_images: int = 0  # 0 = every image of each validation set


@dataclass
class LossConfig:
    rec: float = 0.5  # λ1 · L_rec(SR, HR)
    teacher: float = 0.5  # λ2 · L1(SR, teacher SR)
    affinity: float = 10.0  # λ3 · spatial affinity distillation (FAKD defaults, paper-notes §2)
    rec_kind: Literal["l1", "charbonnier"] = "l1"
    affinity_layers: list[str] = field(default_factory=lambda: list(DEFAULT_AD_LAYERS))
    affinity_chunk: int = 1024  # rows of the N x N affinity per block: bounds memory (see losses.py)


@dataclass
class OptimConfig:
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.0
    scheduler: Literal["cosine", "multistep", "constant"] = "cosine"
    warmup_steps: int = 0
    milestones: list[int] = field(default_factory=list)  # multistep: steps where lr *= gamma
    gamma: float = 0.5
    min_lr: float = 1e-7  # cosine floor
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    ema_decay: float = 0.999  # 0 = no EMA
    amp: Literal["none", "bf16", "fp16"] = "none"


@dataclass
class RunConfig:
    steps: int = 1000
    seed: int = 0
    output: str = "runs/experiment"
    device: str = "auto"
    log_every: int = 10
    val_every: int = 500  # 0 = validate only at the end
    checkpoint_every: int = 500
    max_bad_steps: int = 5  # consecutive non-finite losses before stopping
    tensorboard: bool = True  # if the tensorboard package is installed
    threads: int = 0  # torch CPU threads; 0 = torch's default


@dataclass
class TrainConfig:
    name: str = "experiment"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------- parsing


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except DscloraError as exc:
                errors.append(str(exc))
        raise DscloraError(errors[0] if errors else f"config key {key}: expected {_type_name(tp)}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise DscloraError(f"config key {key}: {value!r} is not one of {', '.join(map(str, allowed))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise DscloraError(f"config key {key}: expected a list, got {type(value).__name__} {value!r}")
        (inner,) = typing.get_args(tp)
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    raise DscloraError(f"config key {key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    where = prefix or "top level"
    if not isinstance(data, dict):
        raise DscloraError(f"config key {where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise DscloraError(f"unknown config key {key} (known here: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def apply_override(data: dict, assignment: str) -> None:
    """Set ``a.b.c=value`` (YAML-parsed value) inside nested dicts."""
    if "=" not in assignment:
        raise DscloraError(f"override {assignment!r}: expected key=value")
    key, raw = assignment.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        raise DscloraError(f"override {key}: cannot parse value {raw!r}") from None
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise DscloraError(f"override {key}: {part} is not a section")
    node[parts[-1]] = value


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise DscloraError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark else ""
            raise DscloraError(f"{path}: not valid YAML{where}") from None
    for assignment in overrides:
        apply_override(data, assignment)
    config = _build(TrainConfig, data, "")
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    """Checks that need more than a type: ranges, files that must exist, consistent choices."""
    m, d, r, o = config.model, config.data, config.run, config.optim
    if m.arch == "dsclora" and not m.base:
        raise DscloraError("config key model.base: a dsclora student needs the pre-trained SPAN to adapt")
    positive = {
        "data.patch": d.patch,
        "data.batch": d.batch,
        "run.steps": r.steps,
        "model.channels": m.channels,
        "model.blocks": m.blocks,
        "model.block_rank": m.block_rank,
        "model.tail_rank": m.tail_rank,
        "loss.affinity_chunk": config.loss.affinity_chunk,
        "run.log_every": r.log_every,
        "run.checkpoint_every": r.checkpoint_every,
    }
    for key, value in positive.items():
        if value < 1:
            raise DscloraError(f"config key {key}: must be >= 1, got {value}")
    if not d.train:
        raise DscloraError("config key data.train: give at least one HR image folder")
    for key, folders in (("data.train", d.train), ("data.val", d.val)):
        for folder in folders:
            if not Path(folder).is_dir():
                raise DscloraError(f"config key {key}: folder not found: {folder}")
    if o.lr <= 0:
        raise DscloraError(f"config key optim.lr: must be > 0, got {o.lr}")
    if not 0 <= o.ema_decay < 1:
        raise DscloraError(f"config key optim.ema_decay: must be in [0, 1), got {o.ema_decay}")
    if len(o.betas) != 2:
        raise DscloraError("config key optim.betas: expected two numbers")
    if d.workers < 0:
        raise DscloraError("config key data.workers: must be >= 0")
