"""Training form -> deploy form: collapse every Conv3XC, merge every ConvLoRA, return a plain SPAN.

The result has exactly the base architecture's parameters and FLOPs, so a DSCLoRA student costs nothing
extra at inference. ``max_abs_difference`` measures how exact a conversion was on a given input.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from dsclora.lora import replace_lora_with_conv
from dsclora.models.conv3xc import Conv3XC
from dsclora.models.span import SPAN


def _collapse_conv3xc(model: nn.Module) -> None:
    for name, module in list(model.named_modules()):
        if isinstance(module, Conv3XC) and not module.deploy:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.to_deploy())


@torch.no_grad()
def to_deploy(model: SPAN) -> SPAN:
    """A new deploy-form ``SPAN`` computing what ``model`` computes; ``model`` itself is not changed."""
    work = copy.deepcopy(model)
    replace_lora_with_conv(work)
    _collapse_conv3xc(work)
    param = next(model.parameters())
    deployed = SPAN(model.config, deploy=True).to(device=param.device, dtype=param.dtype)
    deployed.load_state_dict(work.state_dict(), strict=True)
    return deployed.train(model.training)


@torch.no_grad()
def max_abs_difference(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    """Largest absolute output difference of two models on ``x`` (both run in eval mode)."""
    modes = (a.training, b.training)
    a.eval()
    b.eval()
    try:
        return (a(x) - b(x)).abs().max().item()
    finally:
        a.train(modes[0])
        b.train(modes[1])
