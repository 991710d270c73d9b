"""Low-rank adapters for any network: ConvLoRA on ``nn.Conv2d``, LoRA on ``nn.Linear``, injected by module-name
patterns and merged back into plain layers, so the adapted network ends as exactly its base architecture.

ConvLoRA (Aleem et al., 2024, loralib semantics) on a conv weight W of shape (out, in/groups, kh, kw):

    ΔW = (B @ A).view(W.shape) · α / r,   A: (r·kh, in·kw),   B: (out/groups·kh, r·kh)

a plain reshape with no permutation, as loralib's ``ConvLoRA`` (for square kernels this is exactly its
``A: (r·k, in·k)``, ``B: (out·k, r·k)``). On a linear layer W (out, in): ``ΔW = B @ A · α / r`` with A (r, in),
B (out, r) (Hu et al., LoRA, 2021). A starts kaiming-uniform (a = √5), B at zero, so an injected layer starts
equal to its base. The forward runs one conv (or matmul) with ``W + ΔW``, so training costs little more than the
base; with dropout > 0 the low-rank path needs its own input and runs as a second op on the dropped-out input,
as PEFT does.

``merge(model)`` returns a copy in which every module with a ``fused()`` method is replaced by what it returns
(one walker, like timm's ``reparameterize_model``): adapter layers become plain ``nn.Conv2d`` / ``nn.Linear``
holding ``W + ΔW``, and any architecture's own re-parameterisable blocks collapse too. Adapters never merge in
place, so a merged state dict has no adapter keys and cannot be loaded into an adapted model and merged twice.

This module knows no architecture: which layers get adapters is the caller's list of rules.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class AdapterSpec:
    """Rank, scale numerator and input dropout of one adapted layer (ΔW is scaled by ``alpha / rank``)."""

    rank: int
    alpha: float
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"adapter rank must be >= 1, got {self.rank}")
        if not math.isfinite(self.alpha):
            raise ValueError(f"adapter alpha must be a finite number, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"adapter dropout must be in [0, 1), got {self.dropout}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


# A rule: a module-name pattern (fnmatch syntax, e.g. "block_*.c?_r.eval_conv") and its spec, or None to leave
# the matched layers without an adapter. The first rule a layer's name matches decides.
Rule = tuple[str, AdapterSpec | None]


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


def _copy_parameters(target: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    with torch.no_grad():
        target.weight.copy_(weight)
        if bias is not None:
            target.bias.copy_(bias)


def factor_shapes(layer: nn.Conv2d | nn.Linear, rank: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The shapes of ``lora_A`` and ``lora_B`` for an adapter of ``rank`` on ``layer`` (loaders compare a file's
    factors with these before allocating any)."""
    if isinstance(layer, nn.Linear):
        return (rank, layer.in_features), (layer.out_features, rank)
    kh, kw = layer.kernel_size
    return (rank * kh, layer.in_channels * kw), (layer.out_channels // layer.groups * kh, rank * kh)


class LoRAConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` with a trainable low-rank weight update; state keys ``weight, bias, lora_A, lora_B``.

    The base keys stay where the base conv had them, so a network's own loader reads an adapted state dict's
    base weights unchanged.
    """

    def __init__(self, base: nn.Conv2d, spec: AdapterSpec) -> None:
        super().__init__(**_conv_arguments(base))
        _copy_parameters(self, base.weight, base.bias)
        self.spec = spec
        a_shape, b_shape = factor_shapes(self, spec.rank)
        self.lora_A = nn.Parameter(self.weight.new_empty(a_shape))
        self.lora_B = nn.Parameter(self.weight.new_zeros(b_shape))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()

    def delta_weight(self) -> torch.Tensor:
        """ΔW = (B @ A) reshaped to the conv weight, times alpha / rank."""
        return (self.lora_B @ self.lora_A).view(self.weight.shape) * self.spec.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.dropout == 0.0:
            return self._conv_forward(x, self.weight + self.delta_weight(), self.bias)
        return self._conv_forward(x, self.weight, self.bias) + self._conv_forward(
            self.dropout(x), self.delta_weight(), None
        )

    @torch.no_grad()
    def fused(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` holding ``W + ΔW`` (what ``merge`` puts in this layer's place)."""
        conv = nn.Conv2d(**_conv_arguments(self))
        _copy_parameters(conv, self.weight + self.delta_weight(), self.bias)
        return conv

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.spec.rank}, alpha={self.spec.alpha}"


class LoRALinear(nn.Linear):
    """An ``nn.Linear`` with a trainable low-rank weight update; state keys ``weight, bias, lora_A, lora_B``."""

    def __init__(self, base: nn.Linear, spec: AdapterSpec) -> None:
        weight = base.weight
        super().__init__(base.in_features, base.out_features, base.bias is not None, weight.device, weight.dtype)
        _copy_parameters(self, base.weight, base.bias)
        self.spec = spec
        a_shape, b_shape = factor_shapes(self, spec.rank)
        self.lora_A = nn.Parameter(weight.new_empty(a_shape))
        self.lora_B = nn.Parameter(weight.new_zeros(b_shape))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.spec.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.dropout == 0.0:
            return F.linear(x, self.weight + self.delta_weight(), self.bias)
        return F.linear(x, self.weight, self.bias) + F.linear(self.dropout(x), self.delta_weight())

    @torch.no_grad()
    def fused(self) -> nn.Linear:
        weight = self.weight
        linear = nn.Linear(self.in_features, self.out_features, self.bias is not None, weight.device, weight.dtype)
        _copy_parameters(linear, weight + self.delta_weight(), self.bias)
        return linear

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.spec.rank}, alpha={self.spec.alpha}"


ADAPTERS: dict[type[nn.Module], type[nn.Module]] = {nn.Conv2d: LoRAConv2d, nn.Linear: LoRALinear}
Adapter = LoRAConv2d | LoRALinear
# Layers with weights that no adapter here supports: a rule naming one is refused rather than silently skipped.
UNSUPPORTED = (nn.modules.conv._ConvNd, nn.Embedding, nn.modules.linear.Bilinear)


def replace_module(root: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` where the dotted ``name`` points inside ``root`` (its place in the module order is kept)."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def _first_match(name: str, rules: Sequence[Rule]) -> tuple[str, AdapterSpec | None] | None:
    return next(((pattern, spec) for pattern, spec in rules if fnmatch.fnmatchcase(name, pattern)), None)


def inject(model: nn.Module, rules: Iterable[Rule]) -> list[str]:
    """Give every ``nn.Conv2d`` / ``nn.Linear`` whose qualified name matches a rule an adapter, in place.

    Rules are tried in order and the first match decides (a ``None`` spec leaves the layer as it is). Returns the
    adapted names in module order. A pattern that matches no layer is an error, so a typo cannot silently train
    nothing; a pattern that names a layer with weights no adapter supports (e.g. ``ConvTranspose2d``) is refused
    with that layer's name.
    """
    rules = list(rules)
    used = {pattern: False for pattern, _ in rules}
    targets: list[tuple[str, nn.Module, AdapterSpec]] = []
    for name, module in model.named_modules():
        kind = type(module)
        supported = kind in ADAPTERS
        if not name or not (supported or isinstance(module, UNSUPPORTED)) or isinstance(module, Adapter):
            continue
        match = _first_match(name, rules)
        if match is None:
            continue
        pattern, spec = match
        used[pattern] = True
        if spec is None:
            continue
        if not supported:
            raise ValueError(
                f"layer {name} ({kind.__name__}) matches {pattern!r}, but only Conv2d / Linear take adapters"
            )
        targets.append((name, module, spec))
    unused = [pattern for pattern, hit in used.items() if not hit]
    if unused:
        raise ValueError(f"adapter pattern(s) matched no Conv2d / Linear layer: {', '.join(unused)}")
    for name, module, spec in targets:
        replace_module(model, name, ADAPTERS[type(module)](module, spec))
    return [name for name, _, _ in targets]


def adapter_layers(model: nn.Module) -> Iterator[tuple[str, Adapter]]:
    for name, module in model.named_modules():
        if isinstance(module, Adapter):
            yield name, module


def adapter_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    for _, layer in adapter_layers(model):
        yield layer.lora_A
        yield layer.lora_B


def mark_only_adapters_trainable(model: nn.Module) -> int:
    """Freeze everything but the adapter factors (biases too, as DSCLoRA does); return the trainable count."""
    for p in model.parameters():
        p.requires_grad_(False)
    count = 0
    for p in adapter_parameters(model):
        p.requires_grad_(True)
        count += p.numel()
    return count


def adapter_config(model: nn.Module) -> dict[str, dict[str, float]]:
    """Every adapted layer's rank / alpha / dropout by name: with the state dict, what rebuilds the model."""
    return {
        name: {"rank": m.spec.rank, "alpha": m.spec.alpha, "dropout": m.spec.dropout}
        for name, m in adapter_layers(model)
    }


def rules_from_config(config: dict[str, dict[str, float]]) -> list[Rule]:
    """``adapter_config``'s output as exact-name rules for ``inject``."""
    return [
        (name, AdapterSpec(int(c["rank"]), float(c["alpha"]), float(c.get("dropout", 0.0))))
        for name, c in config.items()
    ]


def reparameterize(model: nn.Module) -> nn.Module:
    """Replace, in place, every submodule that has a ``fused()`` method by what it returns; returns ``model``.

    The outermost such module wins (what it returns already accounts for its children); a module already in its
    fused form says so with ``deploy = True`` and is walked into instead.
    """
    replaced: list[str] = []
    for name, module in list(model.named_modules()):
        if not name or any(name.startswith(prefix + ".") for prefix in replaced):
            continue
        if callable(getattr(module, "fused", None)) and not getattr(module, "deploy", False):
            replace_module(model, name, module.fused())
            replaced.append(name)
    return model


@torch.no_grad()
def merge(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every adapter (and re-parameterisable block) folded in; ``model`` is unchanged."""
    return reparameterize(copy.deepcopy(model))
