"""SPAN's two forms and the exact conversions between them.

- **training form**: every Conv3XC with its wide branches (``sk``, ``conv.0/1/2``), as SPAN trains and as
  BasicSR / spandrel files store it;
- **deploy form**: one plain 3x3 conv per Conv3XC (``eval_conv``), the released checkpoints' layout.

``to_deploy`` is ``adapters.merge`` (the one walker that collapses Conv3XC branches and folds ConvLoRA updates).
``to_train_form`` goes the other way, in two ways:

- exact (for tools that only read training-form keys: spandrel / chaiNNer detect SPAN by ``sk`` and
  ``conv.0/1/2``): per Conv3XC with kernel K, bias b, ``conv.0 = [I; 0]``, ``conv.1 = [[K, 0], [0, 0]]``,
  ``conv.2 = [I, 0]``, ``conv.2.bias = b``, everything else zero; every product in the collapse is a
  multiplication by 1 or 0, so it reproduces K bit for bit. Its zero blocks are a saddle for training: their
  gradients are products with other zero blocks and stay zero;
- trainable (for fine-tuning with the branches' extra parameters): ``conv.0 = W1`` with orthonormal columns and
  ``conv.2 = W3`` with orthonormal rows, drawn at random, and ``conv.1[:, :, y, x] = W3ᵀ K[:, :, y, x] W1ᵀ`` at
  every tap, so ``W3 · conv.1 · W1 = W3 W3ᵀ K W1ᵀ W1 = K``: the same function up to float rounding (~1e-7),
  with every factor dense and learning.
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


def _orthonormal_columns(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=generator, dtype=torch.float64))
    return q  # (rows, cols), qᵀ q = I


@torch.no_grad()
def _expand(deployed: Conv3XC, generator: torch.Generator | None = None) -> Conv3XC:
    """Conv3XC branches collapsing to ``deployed``'s kernel: exact (``generator`` None) or trainable (see above)."""
    weight, bias = deployed.eval_conv.weight, deployed.eval_conv.bias
    out_ch, in_ch = weight.shape[:2]
    train = Conv3XC(in_ch, out_ch, deployed.gain, deploy=False).to(weight)
    for p in train.parameters():
        p.zero_()
    first, middle, last = train.conv
    last.bias.copy_(bias)
    if generator is None:
        first.weight[:in_ch, :, 0, 0] = torch.eye(in_ch, dtype=weight.dtype)
        middle.weight[:out_ch, :in_ch] = weight
        last.weight[:, :out_ch, 0, 0] = torch.eye(out_ch, dtype=weight.dtype)
        return train
    w1 = _orthonormal_columns(first.out_channels, in_ch, generator)  # (g·in, in)
    w3 = _orthonormal_columns(last.in_channels, out_ch, generator).T  # (out, g·out)
    middle.weight.copy_(torch.einsum("mo,oiyx,ni->mnyx", w3.T, weight.double(), w1).to(weight.dtype))
    first.weight.copy_(w1[:, :, None, None].to(weight.dtype))
    last.weight.copy_(w3[:, :, None, None].to(weight.dtype))
    return train


@torch.no_grad()
def to_train_form(model: SPAN, trainable: bool = False, seed: int = 0) -> SPAN:
    """A training-form copy of a SPAN computing what ``model`` (merged first if needed) computes: bit for bit, or
    ``trainable`` (random orthonormal factors drawn from ``seed``; see the module docstring)."""
    train = to_deploy(model)
    generator = torch.Generator().manual_seed(seed) if trainable else None
    for name, module in list(train.named_modules()):
        if isinstance(module, Conv3XC):
            replace_module(train, name, _expand(module, generator))
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
