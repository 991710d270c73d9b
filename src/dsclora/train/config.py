"""Typed training configuration: YAML in, dataclasses out, every key and type checked.

A recipe is a YAML mapping with the sections below; ``key=value`` overrides use dotted paths
(``optim.lr=1e-4``, ``data.train=[a,b]``) and YAML syntax for values. Unknown keys, wrong types and missing
required values are errors that name the key, so a typo cannot silently fall back to a default.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from dsclora.errors import DscloraError
from dsclora.fs import unreadable
from dsclora.models.span import SpanConfig


def option(default: Any, help: str) -> Any:
    """A config field with its help text (shown by ``dsclora train --print-config``)."""
    if isinstance(default, list) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class LoraTarget:
    """One placement rule: which layers get a low-rank update, and its size."""

    pattern: str = option("*", "module-name pattern (fnmatch, e.g. block_*.c?_r.eval_conv) of Conv2d / Linear layers")
    rank: int = option(8, "rank of ΔW in the matched layers; 0 leaves them without an adapter")
    alpha: float = option(16.0, "ΔW is scaled by alpha / rank")


@dataclass
class LoraConfig:
    """Where ConvLoRA (convs) and LoRA (linear layers) go, for ``model.train: lora``."""

    targets: list[LoraTarget] = option(
        [],
        "rules in order, the first match decides; [] = the base architecture's preset (SPAN: the DSCLoRA paper's "
        "20 convs, ranks 2 in blocks and 8 in conv_2 and the upsampler)",
    )
    skip_head: bool = option(False, "leave the first layer the image meets (the head conv) without an adapter")
    dropout: float = option(0.0, "dropout on the low-rank path's input (0 = one conv per layer)")


@dataclass
class ModelConfig:
    """What trains, from what, and the teacher that supervises it."""

    base: str | None = option(
        "span-tiny",
        "the pre-trained network to improve: a registry name, checkpoint, model spec file (.yaml) or a file "
        "spandrel detects; null = a new SPAN shaped by model.span, trained from scratch",
    )
    train: Literal["lora", "full"] = option(
        "lora", "lora: only low-rank updates learn, merged into the base at the end; full: every weight learns"
    )
    train_form: bool = option(
        False,
        "train the base's re-parameterisable training form (SPAN: Conv3XC branches; more parameters while "
        "training, collapsed exactly at the end)",
    )
    teacher: str | list[str] | None = option(
        None, "the frozen teacher: any network model.base accepts (a list: the mean of their outputs); null = the base"
    )
    lora: LoraConfig = option(LoraConfig(), "model.train lora: where the updates go and their ranks")
    span: SpanConfig = option(SpanConfig(), "model.base null: the new SPAN's shape (channels, blocks, scale, ...)")


@dataclass
class DataConfig:
    """Where patches come from and how many."""

    train: list[str] = option([], "HR image folders (images directly inside, or in HR/); LR = MATLAB bicubic")
    train_lr: list[str] = option(
        [], "LR image folders used as they are (no HR): only for recipes whose target is the teacher (loss.rec 0)"
    )
    val: list[str] = option([], "benchmark folders validated during training (any layout `dsclora eval` reads)")
    patch: int = option(64, "LR patch side in pixels; HR / teacher patches are patch x scale")
    batch: int = option(16, "global batch (split evenly across DDP processes)")
    workers: int = option(2, "data-loading processes (0 = in the training process)")
    augment: bool = option(True, "random flips and 90° rotations of every patch")
    cache_in_memory: bool = option(True, "keep decoded images in RAM after first use")
    val_max_images: int = option(0, "validate on the first N images of each set (0 = all)")


@dataclass
class LossConfig:
    """L = rec · d(SR, HR) + teacher · d(SR, teacher SR) + affinity · L_AD (docs/method.md §2)."""

    rec: float = option(0.5, "λ1: weight of the reconstruction term against HR (FAKD default 0.5)")
    teacher: float = option(0.5, "λ2: weight of the term against the teacher's SR output (FAKD default 0.5)")
    affinity: float = option(10.0, "λ3: weight of spatial-affinity distillation (FAKD default 10)")
    rec_distance: Literal["l1", "l2", "charbonnier"] = option("l1", "distance of the reconstruction term")
    teacher_distance: Literal["l1", "l2", "charbonnier"] = option("l1", "distance of the teacher-output term")
    teacher_ensemble: int = option(1, "1: the teacher's own output; 8: its x8 geometric self-ensemble")
    teacher_targets: Literal["online", "cached"] = option(
        "online",
        "online: the teacher runs on each LR patch (the paper); cached: it runs once per training image on the "
        "whole image and its SR is stored and cropped like the patch (no patch-border effects, no teacher cost)",
    )
    affinity_distance: Literal["l1", "l2"] = option(
        "l1", "l1: mean |A_s - A_t| (FAKD, O(N²·C)); l2: mean squared, by C x C Gram products (O(N·C²))"
    )
    affinity_layers: list[str] = option(
        [],
        "feature maps compared, by module name: 'name' (the same module in student and teacher) or "
        "'student_name:teacher_name'; [] = the base architecture's default (SPAN: every block and conv_2)",
    )
    affinity_chunk: int = option(1024, "rows of the N x N affinity per block (l1): bounds its memory")


@dataclass
class OptimConfig:
    """Optimiser, schedule and weight averaging."""

    optimizer: Literal["adam", "adamw"] = option("adam", "adam or adamw")
    lr: float = option(5e-4, "peak learning rate")
    betas: list[float] = option([0.9, 0.99], "Adam betas")
    weight_decay: float = option(0.0, "weight decay (decoupled for adamw)")
    scheduler: Literal["cosine", "multistep", "constant"] = option("cosine", "learning-rate schedule after warm-up")
    warmup_steps: int = option(0, "linear warm-up steps")
    milestones: list[int] = option([], "multistep: steps where lr is multiplied by gamma")
    gamma: float = option(0.5, "multistep factor")
    min_lr: float = option(1e-7, "cosine: the learning rate at the last step")
    grad_clip: float = option(0.0, "largest global gradient norm; 0 = no clipping")
    ema_decay: float = option(0.999, "exponential moving average of the weights (what is validated and saved); 0 = off")
    amp: Literal["none", "bf16", "fp16"] = option("none", "mixed precision: none, bf16 (CPU or GPU), fp16 (GPU)")


@dataclass
class RunConfig:
    """Length, output and bookkeeping of a run."""

    steps: int = option(1000, "optimiser steps")
    seed: int = option(0, "seed of the LoRA initialisation and of the data order (a function of (seed, position))")
    output: str = option("runs/experiment", "folder for logs, checkpoints and final.safetensors")
    device: str = option("auto", "cpu, cuda, mps or auto")
    log_every: int = option(10, "steps between rows of train.csv")
    val_every: int = option(500, "steps between validations; 0 = only at the end")
    checkpoint_every: int = option(500, "steps between writes of latest.pt")
    max_bad_steps: int = option(5, "consecutive non-finite losses before the run stops")
    tensorboard: bool = option(True, "also log to TensorBoard when the package is installed")
    threads: int = option(0, "torch CPU threads; 0 = torch's default")


@dataclass
class TrainConfig:
    """A training recipe: the YAML file's top level."""

    name: str = option("experiment", "run name, shown in logs")
    model: ModelConfig = option(ModelConfig(), "what trains")
    data: DataConfig = option(DataConfig(), "training and validation data")
    loss: LossConfig = option(LossConfig(), "the objective")
    optim: OptimConfig = option(OptimConfig(), "optimiser and schedule")
    run: RunConfig = option(RunConfig(), "length and output")

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
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise DscloraError(f"config key {key}: expected a list, got {type(value).__name__} {value!r}")
        inner = typing.get_args(tp)[0]
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
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
    try:
        return cls(**kwargs)
    except ValueError as exc:  # a model dataclass's own range checks
        raise DscloraError(f"config key {where}: {exc}") from None


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


def load_config(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), check: bool = True
) -> TrainConfig:
    """The recipe at ``path`` with dotted overrides, types checked; ``check`` adds ``validate`` (files, ranges)."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            problem = unreadable(path)
            raise DscloraError(f"config file not found: {path}" if problem.startswith("no such") else problem)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError:
            raise DscloraError(f"{path}: not a YAML recipe (not UTF-8 text); give one like configs/*.yaml") from None
        except RecursionError:
            raise DscloraError(f"{path}: not a recipe (nested too deeply)") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark else ""
            raise DscloraError(f"{path}: not valid YAML{where}") from None
        if not isinstance(data, dict):
            raise DscloraError(f"{path}: not a recipe (a YAML mapping of sections), but a {type(data).__name__}")
    for assignment in overrides:
        apply_override(data, assignment)
    config = _build(TrainConfig, data, "")
    if check:
        validate(config)
    return config


def validate(config: TrainConfig) -> None:
    """Checks that need more than a type: ranges, files that must exist, consistent choices."""
    m, d, r, o, loss = config.model, config.data, config.run, config.optim, config.loss
    if m.base is None and m.train == "lora":
        raise DscloraError("config key model.train: low-rank updates need a pre-trained model.base; use full")
    if m.train_form and m.train == "lora":
        raise DscloraError(
            "config key model.train_form: the base's training form and low-rank updates do not combine "
            "(updates go on the deploy form's layers); use model.train=full with it"
        )
    for i, target in enumerate(m.lora.targets):
        if target.rank < 0:
            raise DscloraError(f"config key model.lora.targets[{i}].rank: must be >= 0, got {target.rank}")
    _check_finite(config, "")
    positive = {
        "data.patch": d.patch,
        "data.batch": d.batch,
        "run.steps": r.steps,
        "loss.affinity_chunk": loss.affinity_chunk,
        "run.log_every": r.log_every,
        "run.checkpoint_every": r.checkpoint_every,
        "run.max_bad_steps": r.max_bad_steps,
    }
    for key, value in positive.items():
        if value < 1:
            raise DscloraError(f"config key {key}: must be >= 1, got {value}")
    non_negative = {
        "run.threads": r.threads,
        "run.seed": r.seed,
        "run.val_every": r.val_every,
        "data.val_max_images": d.val_max_images,
        "optim.warmup_steps": o.warmup_steps,
        "optim.weight_decay": o.weight_decay,
        "optim.grad_clip": o.grad_clip,
        "optim.min_lr": o.min_lr,
        **{f"optim.milestones[{i}]": v for i, v in enumerate(o.milestones)},
    }
    for key, value in non_negative.items():
        if value < 0:
            raise DscloraError(f"config key {key}: must be >= 0, got {value}")
    for i, target in enumerate(m.lora.targets):
        if target.alpha <= 0:
            raise DscloraError(
                f"config key model.lora.targets[{i}].alpha: must be > 0 (ΔW is scaled by α / rank), got {target.alpha}"
            )
    unit = {"model.lora.dropout": m.lora.dropout, **{f"optim.betas[{i}]": b for i, b in enumerate(o.betas)}}
    for key, value in unit.items():
        if not 0 <= value < 1:
            raise DscloraError(f"config key {key}: must be in [0, 1), got {value}")
    if o.gamma <= 0:
        raise DscloraError(f"config key optim.gamma: must be > 0, got {o.gamma}")
    if not d.train and not d.train_lr:
        raise DscloraError("config key data.train: give at least one HR image folder (or LR folders in data.train_lr)")
    if d.train_lr and loss.rec > 0:
        raise DscloraError(
            "config key data.train_lr: LR-only images have no HR to reconstruct, so loss.rec must be 0 "
            "(learn from the teacher: loss.teacher > 0)"
        )
    for key, folders in (("data.train", d.train), ("data.train_lr", d.train_lr), ("data.val", d.val)):
        for folder in folders:
            if not Path(folder).is_dir():
                raise DscloraError(
                    f"config key {key}: folder not found: {folder} (point it at your own images on the command "
                    f"line, e.g. {key}=[path/to/folder], or {key}=[] to leave it out)"
                )
    for key in ("rec", "teacher", "affinity"):
        if getattr(loss, key) < 0:
            raise DscloraError(f"config key loss.{key}: must be >= 0")
    if loss.rec == loss.teacher == loss.affinity == 0:
        raise DscloraError("config key loss: every weight (rec, teacher, affinity) is 0: nothing would be learned")
    if loss.teacher_ensemble not in (1, 8):
        raise DscloraError(f"config key loss.teacher_ensemble: must be 1 or 8, got {loss.teacher_ensemble}")
    if isinstance(m.teacher, list) and (not m.teacher or (len(m.teacher) > 1 and loss.affinity > 0)):
        raise DscloraError(
            "config key model.teacher: give one teacher or a list of several (the affinity term needs one)"
        )
    needs_teacher = loss.teacher > 0 or loss.affinity > 0
    if needs_teacher and m.base is None and not m.teacher:
        raise DscloraError("config key model.teacher: a SPAN trained from scratch has no teacher unless one is named")
    if o.lr <= 0:
        raise DscloraError(f"config key optim.lr: must be > 0, got {o.lr}")
    if not 0 <= o.ema_decay < 1:
        raise DscloraError(f"config key optim.ema_decay: must be in [0, 1), got {o.ema_decay}")
    if len(o.betas) != 2:
        raise DscloraError("config key optim.betas: expected two numbers")
    if d.workers < 0:
        raise DscloraError("config key data.workers: must be >= 0")


def _check_finite(node: Any, prefix: str) -> None:
    """Refuse NaN and ±inf in every float key (YAML reads .nan and .inf; ``lr=nan`` trains nothing)."""
    for f in dataclasses.fields(node):
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            _check_finite(value, key)
        elif isinstance(value, float) and not math.isfinite(value):
            raise DscloraError(f"config key {key}: must be a finite number, got {value}")
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                if isinstance(item, float) and not math.isfinite(item):
                    raise DscloraError(f"config key {key}[{i}]: must be a finite number, got {item}")


def describe(config: TrainConfig) -> str:
    """The resolved recipe as YAML, every key followed by its meaning (``dsclora train --print-config``)."""
    lines: list[str] = []

    def walk(obj: Any, indent: int) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            note = f.metadata.get("help", "")
            pad = "  " * indent
            if dataclasses.is_dataclass(value):
                lines.append(f"{pad}{f.name}:{'  # ' + note if note else ''}")
                walk(value, indent + 1)
            else:
                if isinstance(value, list | tuple):  # lists of rules (dataclasses) print as YAML mappings
                    value = [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in value]
                text = yaml.safe_dump(value, default_flow_style=True, width=1000, sort_keys=False)
                text = text.strip().removesuffix("...").strip()
                lines.append(f"{pad}{f.name}: {text}{'  # ' + note if note else ''}")

    walk(config, 0)
    return "\n".join(lines) + "\n"
