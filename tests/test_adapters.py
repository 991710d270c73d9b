"""Adapters on any network: ConvLoRA / LoRA layers against hand-derived formulas, injection by rules, and a
merge that gives back exactly the base architecture (same keys, loadable strictly, same function)."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dsclora.models.adapters import (
    AdapterSpec,
    LoRAConv2d,
    LoRALinear,
    adapter_config,
    adapter_parameters,
    inject,
    mark_only_adapters_trainable,
    merge,
    rules_from_config,
)


class Toy(nn.Module):
    """Convs of several kernel sizes, strides, groups, dilation, padding modes and biases, and Linear layers (a
    channel-attention MLP and a token mixer), so every adapter path runs in one forward."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 8, 4, stride=2, padding=1, bias=False)
        self.depthwise = nn.Conv2d(8, 8, 5, padding=2, groups=8)
        self.grouped = nn.Conv2d(8, 12, (3, 1), padding=(1, 0), groups=4, padding_mode="reflect")
        self.dilated = nn.Conv2d(12, 8, 3, padding=2, dilation=2)
        self.attention = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 8, bias=False))
        self.mix = nn.Linear(8, 8)
        self.tail = nn.Sequential(nn.Conv2d(8, 12, 1), nn.PixelShuffle(2))
        self.up = nn.ConvTranspose2d(3, 3, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.head(x))
        h = F.gelu(self.down(h))
        h = self.dilated(F.gelu(self.grouped(self.depthwise(h))))
        h = h * torch.sigmoid(self.attention(h.mean((2, 3))))[:, :, None, None]
        h = self.mix(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.up(self.tail(h))


def randomise_factors(model: nn.Module) -> None:
    with torch.no_grad():
        for p in adapter_parameters(model):
            p.normal_(0, 0.05)


def test_conv_delta_follows_loralib_shapes_rank_and_scaling() -> None:
    base = nn.Conv2d(6, 4, 3, padding=1)
    layer = LoRAConv2d(base, AdapterSpec(rank=2, alpha=3))
    assert layer.lora_A.shape == (2 * 3, 6 * 3) and layer.lora_B.shape == (4 * 3, 2 * 3)
    assert torch.count_nonzero(layer.lora_B) == 0 and torch.equal(
        layer(torch.ones(1, 6, 5, 5)), base(torch.ones(1, 6, 5, 5))
    )
    nn.init.normal_(layer.lora_B)
    delta = layer.delta_weight()
    # Hand-derived element formula of the plain reshape: ΔW[o,i,y,x] = s · Σ_j B[a, j] A[j, b]
    # with flat index (o·in + i)·k² + y·k + x = a·(in·k) + b.
    k, cin = 3, 6
    o, i, y, x = 3, 4, 2, 1
    flat = ((o * cin + i) * k + y) * k + x
    a, b = divmod(flat, cin * k)
    assert torch.isclose(delta[o, i, y, x], 1.5 * (layer.lora_B[a] @ layer.lora_A[:, b]))
    assert torch.linalg.matrix_rank(delta.reshape(4 * k, cin * k)).item() <= 2 * k
    x_in = torch.randn(1, 6, 7, 7)
    assert torch.allclose(layer(x_in), F.conv2d(x_in, base.weight + delta, base.bias, padding=1), atol=1e-5)


def test_grouped_conv_delta_has_the_weight_shape_and_loralib_factors() -> None:
    base = nn.Conv2d(8, 12, (3, 1), groups=4)
    layer = LoRAConv2d(base, AdapterSpec(rank=2, alpha=2))
    # loralib's ConvLoRA: A (r·k, in·k), B (out/groups·k, r·k); here kh = 3, kw = 1
    assert layer.lora_A.shape == (2 * 3, 8 * 1) and layer.lora_B.shape == (12 // 4 * 3, 2 * 3)
    nn.init.normal_(layer.lora_B)
    assert layer.delta_weight().shape == base.weight.shape == (12, 2, 3, 1)


def test_linear_delta_is_b_times_a_scaled() -> None:
    base = nn.Linear(6, 5)
    layer = LoRALinear(base, AdapterSpec(rank=3, alpha=6))
    nn.init.normal_(layer.lora_B)
    assert torch.allclose(layer.delta_weight(), 2.0 * layer.lora_B @ layer.lora_A)
    x = torch.randn(4, 6)
    assert torch.allclose(layer(x), x @ (base.weight + layer.delta_weight()).T + base.bias, atol=1e-6)


def test_inject_all_then_merge_is_the_base_architecture_computing_the_adapted_function() -> None:
    torch.manual_seed(0)
    model = Toy().eval()
    base_keys = set(model.state_dict())
    names = inject(model, [("up", None), ("*", AdapterSpec(2, 4))])
    assert names == ["head", "down", "depthwise", "grouped", "dilated", "attention.0", "attention.2", "mix", "tail.0"]
    randomise_factors(model)
    x = torch.rand(2, 3, 16, 12)
    with torch.no_grad():
        adapted = model(x)
        merged = merge(model)
        assert (merged(x) - adapted).abs().max().item() <= 1e-5
    assert any(isinstance(m, LoRAConv2d) for m in model.modules())  # merge made a copy
    assert not any(isinstance(m, LoRAConv2d | LoRALinear) for m in merged.modules())
    assert set(merged.state_dict()) == base_keys
    # merge -> save -> load into a fresh base, strictly: the adapted function, once (ΔW is not added twice)
    buffer = io.BytesIO()
    torch.save(merged.state_dict(), buffer)
    fresh = Toy().eval()
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True), strict=True)
    with torch.no_grad():
        assert (fresh(x) - adapted).abs().max().item() <= 1e-5


def test_rules_first_match_decides_and_rank_zero_excludes() -> None:
    model = Toy()
    names = inject(model, [("head", None), ("attention.*", AdapterSpec(1, 1)), ("*", None)])
    assert names == ["attention.0", "attention.2"]
    assert adapter_config(model) == {"attention.0": {"rank": 1, "alpha": 1.0, "dropout": 0.0}} | {
        "attention.2": {"rank": 1, "alpha": 1.0, "dropout": 0.0}
    }
    copy = Toy()
    inject(copy, rules_from_config(adapter_config(model)))
    assert set(copy.state_dict()) == set(model.state_dict())


def test_mistakes_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="matched no Conv2d / Linear layer: block_9"):
        inject(Toy(), [("block_9.*", AdapterSpec(1, 1))])
    with pytest.raises(ValueError, match=r"layer up \(ConvTranspose2d\) .* only Conv2d / Linear"):
        inject(Toy(), [("*", AdapterSpec(1, 1))])
    with pytest.raises(ValueError, match="rank must be >= 1"):
        AdapterSpec(0, 1)


def test_only_factors_train_and_dropout_acts_in_training() -> None:
    model = Toy()
    inject(model, [("up", None), ("*", AdapterSpec(2, 4, dropout=0.5))])
    count = mark_only_adapters_trainable(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    assert count == sum(p.numel() for p in adapter_parameters(model))
    randomise_factors(model)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        model.eval()
        clean = model(x)
        assert (merge(model)(x) - clean).abs().max().item() <= 1e-5  # dropout off: the same merged function
        model.train()
        assert not torch.allclose(model(x), clean)
