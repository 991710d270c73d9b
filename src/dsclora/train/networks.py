"""The networks a recipe trains: the student (low-rank updates on any base network, or all of its weights) and
its frozen teachers (any network dsclora loads), all as model descriptors."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from dsclora.errors import DscloraError
from dsclora.models.adapters import AdapterSpec, Rule, adapter_config, inject, mark_only_adapters_trainable
from dsclora.models.descriptor import ModelDescriptor
from dsclora.models.span import SPAN
from dsclora.train.config import LoraConfig, ModelConfig
from dsclora.weights.load import load
from dsclora.weights.sources import span as span_source


@dataclass
class Student:
    """The trainable network and what a training state records to build it again (``weights.load.student_of``)."""

    descriptor: ModelDescriptor
    info: dict


def head_layer(model: nn.Module, in_channels: int) -> str:
    """The first Conv2d / Linear a forward runs: the head, found by tracing one small forward."""
    order: list[str] = []
    hooks = [
        m.register_forward_pre_hook(lambda _m, _x, name=name: order.append(name))
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    try:
        param = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, in_channels, 16, 16, device=param.device, dtype=param.dtype))
    finally:
        for hook in hooks:
            hook.remove()
    if not order:
        raise DscloraError("model.lora.skip_head: the network runs no Conv2d / Linear layer")
    return order[0]


def adapter_rules(lora: LoraConfig, base: ModelDescriptor, module: nn.Module) -> list[Rule]:
    """The recipe's placement rules, or the base architecture's preset; the head first if it is skipped."""
    if lora.targets:
        rules: list[Rule] = [
            (t.pattern, AdapterSpec(t.rank, t.alpha, lora.dropout) if t.rank > 0 else None) for t in lora.targets
        ]
    elif base.hooks.adapter_rules is not None:
        rules = [(p, AdapterSpec(s.rank, s.alpha, lora.dropout) if s else None) for p, s in base.hooks.adapter_rules()]
    else:
        raise DscloraError(
            f"config key model.lora.targets: {base.arch} has no default placement; name the layers, e.g. "
            "[{pattern: '*', rank: 8, alpha: 16}] for every conv"
        )
    if lora.skip_head:
        rules.insert(0, (head_layer(module, base.in_channels), None))
    return rules


def _base(m: ModelConfig, device: torch.device) -> ModelDescriptor:
    if m.base is None:
        return span_source.descriptor(SPAN(m.span, deploy=True), "new SPAN", None, "")
    return load(m.base, device, network=True)


def build_student(m: ModelConfig, device: torch.device, seed: int) -> Student:
    """The trainable network: only the adapters' factors require grad for ``lora``, every weight for ``full``.

    The adapters' random initialisation draws from ``seed`` alone, so it does not depend on how the base was
    loaded.
    """
    base = _base(m, device)
    module = copy.deepcopy(base.module)
    if m.base is None:  # from scratch: a randomly initialised SPAN in the asked form
        module = SPAN(m.span, deploy=not m.train_form).to(device)
    elif m.train_form:
        if base.hooks.train_form is None:
            raise DscloraError(f"config key model.train_form: {base.arch} has no re-parameterisable training form")
        module = base.hooks.train_form(module, trainable=True)
    adapters = {}
    if m.train == "lora":
        torch.manual_seed(seed)
        try:
            inject(module, adapter_rules(m.lora, base, module))
        except ValueError as exc:
            raise DscloraError(f"config key model.lora.targets: {exc}") from None
        mark_only_adapters_trainable(module)
        adapters = adapter_config(module)
    else:
        for p in module.parameters():
            p.requires_grad_(True)
    info = {"source": base.source, "train_form": m.train_form, "adapters": adapters}
    return Student(base.with_module(module.to(device).train()), info)


def build_teachers(m: ModelConfig, scale: int, device: torch.device) -> list[ModelDescriptor]:
    """``model.teacher`` (one or several), else the base: frozen, merged, eval mode; each at the student's scale."""
    names = m.teacher if isinstance(m.teacher, list) else [m.teacher or m.base]
    teachers = []
    for name in names:
        teacher = load(name, device, network=True)
        if teacher.scale != scale:
            raise DscloraError(f"config key model.teacher: {name} is a x{teacher.scale} model, the student is x{scale}")
        for p in teacher.module.parameters():
            p.requires_grad_(False)
        teachers.append(teacher)
    return teachers
