"""ConvLoRA: a low-rank update of a convolution's weight (Aleem et al., 2024, loralib semantics).

For a conv weight W of shape (out, in, k, k) the update is

    ΔW = (B @ A).view(out, in, k, k) · α / r,   A: (r·k, in·k),   B: (out·k, r·k)

a plain reshape with no permutation, as loralib's ``ConvLoRA`` does. A starts kaiming-uniform (a = √5), B at
zero, so an injected layer starts equal to its base. The forward convolves once with ``W + ΔW`` (one conv,
not a second branch), so training costs little more than the base; with dropout > 0 the low-rank path needs
its own input and runs as a second conv on the dropped-out input, as PEFT does. ``merge()`` folds ΔW into W,
after which the layer is a plain conv of the base architecture; ``fused()`` returns that plain conv (the hook
``forms.reparameterize`` calls).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from dsclora.models.forms import replace_module


@dataclass(frozen=True)
class LoraSpec:
    """Rank, scale numerator and input dropout of one adapted conv (scaling = alpha / rank)."""

    rank: int
    alpha: float
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


def _conv_arguments(conv: nn.Conv2d) -> dict:
    """Constructor arguments that rebuild ``conv``'s geometry, device and dtype."""
    return {
        "in_channels": conv.in_channels,
        "out_channels": conv.out_channels,
        "kernel_size": conv.kernel_size,
        "stride": conv.stride,
        "padding": conv.padding,
        "dilation": conv.dilation,
        "groups": conv.groups,
        "bias": conv.bias is not None,
        "padding_mode": conv.padding_mode,
        "device": conv.weight.device,
        "dtype": conv.weight.dtype,
    }


class LoRAConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` with a trainable low-rank weight update; state keys ``weight, bias, lora_A, lora_B``."""

    def __init__(self, base: nn.Conv2d, spec: LoraSpec) -> None:
        if base.kernel_size[0] != base.kernel_size[1]:
            raise ValueError(f"ConvLoRA needs a square kernel, got {base.kernel_size}")
        super().__init__(**_conv_arguments(base))
        with torch.no_grad():
            self.weight.copy_(base.weight)
            if base.bias is not None:
                self.bias.copy_(base.bias)
        self.spec = spec
        k = self.kernel_size[0]
        out_ch, in_ch = self.weight.shape[:2]
        self.lora_A = nn.Parameter(self.weight.new_empty(spec.rank * k, in_ch * k))
        self.lora_B = nn.Parameter(self.weight.new_zeros(out_ch * k, spec.rank * k))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """ΔW = (B @ A) reshaped to the conv weight, times alpha / rank."""
        return (self.lora_B @ self.lora_A).view(self.weight.shape) * self.spec.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self._conv_forward(x, self.weight, self.bias)
        if self.spec.dropout == 0.0:
            return self._conv_forward(x, self.weight + self.delta_weight(), self.bias)
        return self._conv_forward(x, self.weight, self.bias) + self._conv_forward(
            self.dropout(x), self.delta_weight(), None
        )

    @torch.no_grad()
    def merge(self) -> None:
        """Fold ΔW into the base weight (the layer then computes the same function with one plain conv)."""
        if not self.merged:
            self.weight.add_(self.delta_weight())
            self.merged = True

    @torch.no_grad()
    def fused(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` with the merged weight; this layer is left as it was."""
        conv = nn.Conv2d(**_conv_arguments(self))
        conv.weight.copy_(self.weight if self.merged else self.weight + self.delta_weight())
        if self.bias is not None:
            conv.bias.copy_(self.bias)
        return conv

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.spec.rank}, alpha={self.spec.alpha}, merged={self.merged}"


LoraRules = Mapping[str, LoraSpec] | Iterable[tuple[str, LoraSpec]]


def inject_lora(model: nn.Module, rules: LoraRules) -> list[str]:
    """Wrap every ``nn.Conv2d`` whose qualified name matches a glob pattern in a ``LoRAConv2d``.

    ``rules`` maps patterns (``fnmatch`` syntax, e.g. ``"block_*.c?_r.eval_conv"``) to specs; the first
    matching pattern wins. Returns the wrapped names. A pattern that matches no conv is an error, so a typo
    cannot silently train nothing.
    """
    items = list(rules.items()) if isinstance(rules, Mapping) else list(rules)
    used = {pattern: False for pattern, _ in items}
    targets: list[tuple[str, nn.Conv2d, LoraSpec]] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d) or isinstance(module, LoRAConv2d):
            continue
        for pattern, spec in items:
            if fnmatch.fnmatchcase(name, pattern):
                used[pattern] = True
                targets.append((name, module, spec))
                break
    unused = [p for p, hit in used.items() if not hit]
    if unused:
        raise ValueError(f"LoRA pattern(s) matched no Conv2d: {', '.join(unused)}")
    for name, module, spec in targets:
        replace_module(model, name, LoRAConv2d(module, spec))
    return [name for name, _, _ in targets]


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRAConv2d]]:
    for name, module in model.named_modules():
        if isinstance(module, LoRAConv2d):
            yield name, module


def lora_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    for _, layer in lora_layers(model):
        yield layer.lora_A
        yield layer.lora_B


def mark_only_lora_trainable(model: nn.Module) -> int:
    """Freeze everything but the LoRA factors (biases too, as DSCLoRA does); return the trainable count."""
    for p in model.parameters():
        p.requires_grad_(False)
    count = 0
    for p in lora_parameters(model):
        p.requires_grad_(True)
        count += p.numel()
    return count


__all__ = [
    "LoRAConv2d",
    "LoraRules",
    "LoraSpec",
    "inject_lora",
    "lora_layers",
    "lora_parameters",
    "mark_only_lora_trainable",
]
