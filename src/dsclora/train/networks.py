"""The networks a recipe trains: the student (ConvLoRA on a base, or a whole SPAN) and its frozen teacher."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dsclora.errors import DscloraError
from dsclora.fs import sha256_file
from dsclora.models.dsclora import DSCLoRA
from dsclora.models.forms import to_deploy, to_train_form
from dsclora.models.lora import mark_only_lora_trainable
from dsclora.models.span import SPAN
from dsclora.train.config import ModelConfig
from dsclora.weights.checkpoints import load_model
from dsclora.weights.registry import resolve


@dataclass
class Teacher:
    """A frozen deploy-form SPAN and the sha256 of the file it came from (what cached targets are keyed by)."""

    model: SPAN
    weights_sha256: str


def build_student(m: ModelConfig, device: torch.device) -> SPAN:
    """The trainable network: only its ``lora_A`` / ``lora_B`` require grad for ``dsclora``, everything for ``span``."""
    if m.arch == "dsclora":
        base, _ = load_model(resolve(m.base), device)
        student = DSCLoRA.from_span(base, m.lora).to(device)
        mark_only_lora_trainable(student)
        return student
    if m.init:
        model, spec = load_model(resolve(m.init), device)
        if spec.arch != "span":
            raise DscloraError(f"config key model.init: {m.init} is a {spec.arch} checkpoint, not a SPAN")
        model = to_deploy(model) if m.form == "deploy" else to_train_form(model)
    else:
        model = SPAN(m.span, deploy=m.form == "deploy")
    model = model.to(device).train()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def build_teacher(m: ModelConfig, scale: int, device: torch.device) -> Teacher:
    """``model.teacher``, else the base / init weights: frozen, deploy form, eval mode; its scale must match."""
    name = m.teacher or (m.base if m.arch == "dsclora" else m.init)
    path: Path = resolve(name)
    model, spec = load_model(path, device)
    if spec.span.scale != scale:
        raise DscloraError(f"config key model.teacher: {name} is a x{spec.span.scale} model, the student is x{scale}")
    teacher = to_deploy(model).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return Teacher(teacher, sha256_file(path))
