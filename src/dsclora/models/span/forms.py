"""SPAN's two forms and the exact conversions between them.

- **training form**: every Conv3XC with its wide branches (``sk``, ``conv.0/1/2``), as SPAN trains and as
  BasicSR / spandrel files store it;
- **deploy form**: one plain 3x3 conv per Conv3XC (``eval_conv``), the released checkpoints' layout.

``to_deploy`` is ``adapters.merge`` (the one walker that collapses Conv3XC branches and folds ConvLoRA updates).
``to_train_form`` goes the other way: Conv3XC branches whose collapse reproduces given deploy kernels bit for
bit, for tools that only read training-form keys (spandrel / chaiNNer detect SPAN by ``sk`` and ``conv.0/1/2``)
and for fine-tuning with the branches' extra parameters. Its construction per Conv3XC with kernel K, bias b:
``conv.0 = [I; 0]``, ``conv.1 = [[K, 0], [0, 0]]``, ``conv.2 = [I, 0]``, ``conv.2.bias = b``, everything else
zero; every product in the collapse is a multiplication by 1 or 0.
"""

from __future__ import annotations

import torch
from torch import nn

from dsclora.models.adapters import merge, replace_module
from dsclora.models.span.conv3xc import Conv3XC
from dsclora.models.span.network import SPAN


def to_deploy(model: nn.Module) -> SPAN:
    """A deploy-form copy of a SPAN (branches collapsed, adapters folded); ``model`` itself is not changed."""
    deployed = merge(model)
    if not isinstance(deployed, SPAN):
        raise TypeError(f"to_deploy needs a SPAN, got {type(model).__name__}")
    return deployed


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
    """A training-form copy of a SPAN computing exactly what ``model`` (merged first if needed) computes."""
    train = to_deploy(model)
    for name, module in list(train.named_modules()):
        if isinstance(module, Conv3XC):
            replace_module(train, name, _expand(module))
    return train


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
