"""Writing our models in forms other tools read.

``deploy_to_train_form`` builds a training-form SPAN whose Conv3XC branches collapse *exactly* to given deploy
kernels, so tools that only accept training-form keys (spandrel / chaiNNer detect SPAN by ``sk`` and
``conv.0/1/2``) load our deploy weights and compute our outputs. Construction per Conv3XC with kernel K, bias b:
``conv.0 = [I; 0]``, ``conv.1 = [[K, 0], [0, 0]]``, ``conv.2 = [I, 0]``, ``conv.2.bias = b``, everything else
zero. Every product in the collapse is a multiplication by 1 or 0, so the collapse reproduces K bit for bit.
"""

from __future__ import annotations

import torch

from dsclora.models.conv3xc import Conv3XC
from dsclora.models.span import SPAN
from dsclora.reparam import to_deploy


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
def deploy_to_train_form(model: SPAN) -> SPAN:
    """A training-form SPAN computing exactly what ``model`` (merged first if needed) computes."""
    deployed = to_deploy(model)
    train = SPAN(deployed.config, deploy=False).to(next(deployed.parameters()))
    for name, module in deployed.named_modules():
        if isinstance(module, Conv3XC):
            parent_name, _, child = name.rpartition(".")
            parent = train.get_submodule(parent_name) if parent_name else train
            setattr(parent, child, _expand(module))
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
