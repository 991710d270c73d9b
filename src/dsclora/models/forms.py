"""A network's forms and the conversions between them, all exact.

- **training form**: Conv3XC with its wide branches (``sk``, ``conv.0/1/2``) and/or ConvLoRA convs (``W + ΔW``);
- **deploy form**: one plain 3x3 conv per Conv3XC (``eval_conv``), every ΔW merged: exactly the base SPAN's
  parameters and FLOPs, so a DSCLoRA student costs nothing extra at inference.

One walker does every collapse (as timm's ``reparameterize_model``): any module with a ``fused()`` method
(``Conv3XC``, ``LoRAConv2d``) is replaced by what that method returns. ``to_train_form`` goes the other way:
Conv3XC branches whose collapse reproduces given deploy kernels bit for bit, for tools that only read
training-form keys (spandrel / chaiNNer detect SPAN by ``sk`` and ``conv.0/1/2``). Its construction per Conv3XC
with kernel K, bias b: ``conv.0 = [I; 0]``, ``conv.1 = [[K, 0], [0, 0]]``, ``conv.2 = [I, 0]``,
``conv.2.bias = b``, everything else zero; every product in the collapse is a multiplication by 1 or 0.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import nn

from dsclora.data.images import probe_image
from dsclora.errors import DscloraError
from dsclora.models.conv3xc import Conv3XC
from dsclora.models.span import SPAN

Form = Literal["deploy", "train"]
EXACT = 1e-4  # largest output difference (on a [0, 1] image) a conversion may show; fp32 rounding is ~1e-6


def replace_module(root: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` where the dotted ``name`` points inside ``root`` (its place in the module order is kept)."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def reparameterize(model: nn.Module) -> nn.Module:
    """Replace, in place, every submodule that has a ``fused()`` method by its fused equivalent; returns ``model``."""
    for name, module in list(model.named_modules()):
        if name and hasattr(module, "fused") and not getattr(module, "deploy", False):
            replace_module(model, name, module.fused())
    return model


@torch.no_grad()
def to_deploy(model: SPAN) -> SPAN:
    """A new deploy-form ``SPAN`` computing what ``model`` computes; ``model`` itself is not changed."""
    work = reparameterize(copy.deepcopy(model))
    param = next(model.parameters())
    deployed = SPAN(model.config, deploy=True).to(device=param.device, dtype=param.dtype)
    deployed.load_state_dict(work.state_dict(), strict=True)
    return deployed.train(model.training)


@torch.no_grad()
def _expand(deployed: Conv3XC) -> Conv3XC:
    weight, bias = deployed.eval_conv.weight, deployed.eval_conv.bias
    out_ch, in_ch = weight.shape[:2]
    train = Conv3XC(in_ch, out_ch, deployed.gain, deploy=False).to(weight)
    for p in train.parameters():
        p.zero_()
    first, middle, last = train.conv
    first.weight[:in_ch, :, 0, 0] = torch.eye(in_ch, dtype=weight.dtype)
    middle.weight[:out_ch, :in_ch] = weight
    last.weight[:, :out_ch, 0, 0] = torch.eye(out_ch, dtype=weight.dtype)
    last.bias.copy_(bias)
    return train


@torch.no_grad()
def to_train_form(model: SPAN) -> SPAN:
    """A training-form SPAN computing exactly what ``model`` (merged first if needed) computes."""
    if not model.deploy and type(model) is SPAN:
        return model
    deployed = to_deploy(model)
    train = SPAN(deployed.config, deploy=False).to(next(deployed.parameters()))
    for name, module in deployed.named_modules():
        if isinstance(module, Conv3XC):
            replace_module(train, name, _expand(module))
    train.conv_cat.load_state_dict(deployed.conv_cat.state_dict())
    train.upsampler.load_state_dict(deployed.upsampler.state_dict())
    return train.train(model.training)


@torch.no_grad()
def derived_eval_conv_state(model: SPAN) -> dict[str, torch.Tensor]:
    """The ``*.eval_conv.*`` tensors BasicSR / spandrel files carry beside the training branches."""
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, Conv3XC) and not module.deploy:
            weight, bias = module.fused_weight_and_bias()
            state[f"{name}.eval_conv.weight"] = weight.detach().cpu().contiguous()
            state[f"{name}.eval_conv.bias"] = bias.detach().cpu().contiguous()
    return state


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


def convert(model: SPAN, form: Form) -> tuple[SPAN, float]:
    """``model`` in ``form`` (a copy), checked on a real-looking image: (converted model, max abs difference).

    Every conversion in the project goes through here (``convert``, ``merge``, ``export``, the trainer's final
    model), so none of them can write a model that does not compute what it was given.
    """
    converted = to_deploy(model) if form == "deploy" else to_train_form(model)
    param = next(model.parameters())
    probe = probe_image(48, 48).to(device=param.device, dtype=param.dtype)
    diff = max_abs_difference(model, converted, probe)
    if not diff <= EXACT:
        raise DscloraError(f"the {form}-form model differs from its source by {diff:.2e} (> {EXACT:.0e}); not written")
    return converted, diff
