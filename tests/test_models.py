"""Conv3XC collapse, ConvLoRA merge / unmerge / injection and ``to_deploy`` against independent references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dsclora import SPAN, DSCLoRA, DSCLoRAConfig, LoRAConv2d, LoraSpec, SpanConfig, inject_lora, to_deploy
from dsclora.measure.profiling import conv_statistics, count_parameters
from dsclora.models.conv3xc import Conv3XC
from dsclora.models.ensemble import SelfEnsemble
from dsclora.models.lora import lora_parameters, mark_only_lora_trainable
from dsclora.runtime.fused import FusedSPAN


def branch_sum(module: Conv3XC, x: torch.Tensor) -> torch.Tensor:
    """The training-form definition (SPAN paper / BasicSR): chain on the zero-padded input plus the 1x1 skip."""
    chain = module.conv[2](module.conv[1](module.conv[0](F.pad(x, (1, 1, 1, 1)))))
    return chain + module.sk(x)


def randomise(model: nn.Module, scale: float = 0.05) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, scale)


def realistic(model: SPAN) -> SPAN:
    """Random weights, with the upsampler scaled so outputs are O(1) like a trained SR network's.

    fp32 rounding error is relative to the output's size; a random net on the x255 input emits values in the
    tens, a trained one values in [0, 1]. The 1e-5 bound of the issue is meant at that scale.
    """
    x = torch.rand(1, model.config.in_channels, 24, 24)
    with torch.no_grad():
        spread = model(x).abs().max().item()
        model.upsampler[0].weight.div_(max(spread, 1e-3))
        model.upsampler[0].bias.zero_()
    return model


def expected_params(c: int, blocks: int, scale: int, cin: int = 3, cout: int = 3) -> int:
    """Hand count for a deploy SPAN: conv_1, 3 convs per block, conv_cat (1x1), conv_2, upsampler (3x3)."""
    conv3 = lambda i, o: i * o * 9 + o  # noqa: E731
    return conv3(cin, c) + blocks * 3 * conv3(c, c) + (4 * c * c + c) + conv3(c, c) + conv3(c, cout * scale**2)


def expected_macs(c: int, blocks: int, scale: int, h: int, w: int, cin: int = 3, cout: int = 3) -> int:
    per_pixel = cin * c * 9 + blocks * 3 * c * c * 9 + 4 * c * c + c * c * 9 + c * cout * scale**2 * 9
    return per_pixel * h * w


@pytest.mark.parametrize(("cin", "cout"), [(3, 3), (5, 7), (1, 1)])
def test_conv3xc_forward_and_collapse_equal_branch_sum(cin: int, cout: int) -> None:
    conv = Conv3XC(cin, cout, gain=2)
    randomise(conv, 0.3)
    x = torch.randn(2, cin, 9, 11)
    reference = branch_sum(conv, x)
    assert torch.allclose(conv(x), reference, atol=1e-5, rtol=1e-5)
    deployed = conv.fused()
    assert set(deployed.state_dict()) == {"eval_conv.weight", "eval_conv.bias"}
    assert torch.allclose(deployed(x), reference, atol=1e-5, rtol=1e-5)
    conv64 = conv.double()
    assert (conv64.fused()(x.double()) - branch_sum(conv64, x.double())).abs().max() < 1e-12


def test_lora_starts_as_identity_change() -> None:
    base = nn.Conv2d(6, 4, 3, padding=1)
    layer = LoRAConv2d(base, LoraSpec(rank=2, alpha=4))
    assert torch.count_nonzero(layer.lora_B) == 0 and torch.count_nonzero(layer.lora_A) > 0
    x = torch.randn(1, 6, 8, 8)
    assert torch.equal(layer(x), base(x))


def test_lora_delta_follows_loralib_shapes_rank_and_scaling() -> None:
    base = nn.Conv2d(6, 4, 3, padding=1)
    layer = LoRAConv2d(base, LoraSpec(rank=2, alpha=3))
    assert layer.lora_A.shape == (2 * 3, 6 * 3) and layer.lora_B.shape == (4 * 3, 2 * 3)
    nn.init.normal_(layer.lora_B)
    delta = layer.delta_weight()
    # Hand-derived element formula of the plain reshape: ΔW[o,i,y,x] = s · Σ_j B[o·k + a, j] A[j, b]
    # with flat index (o·in + i)·k² + y·k + x = a·(in·k) + b.
    k, cin = 3, 6
    o, i, y, x = 3, 4, 2, 1
    flat = ((o * cin + i) * k + y) * k + x
    a, b = divmod(flat, cin * k)
    assert torch.isclose(delta[o, i, y, x], 1.5 * (layer.lora_B[a] @ layer.lora_A[:, b]))
    assert torch.linalg.matrix_rank(delta.reshape(4 * k, cin * k)).item() <= 2 * k
    x_in = torch.randn(1, 6, 7, 7)
    expected = F.conv2d(x_in, base.weight + delta, base.bias, padding=1)
    assert torch.allclose(layer(x_in), expected, atol=1e-5)


def test_lora_merge_fused_and_dropout_path() -> None:
    base = nn.Conv2d(5, 5, 3, padding=1)
    layer = LoRAConv2d(base, LoraSpec(rank=3, alpha=6, dropout=0.5))
    nn.init.normal_(layer.lora_B, std=0.1)
    layer.eval()  # dropout off: the two-branch path must equal the merged weight
    x = torch.randn(2, 5, 6, 6)
    before = layer(x)
    plain = layer.fused()
    assert type(plain) is nn.Conv2d and torch.allclose(plain(x), before, atol=1e-5)
    assert torch.allclose(plain.weight, base.weight + layer.delta_weight(), atol=1e-7)
    layer.merge()
    assert layer.merged and torch.allclose(layer(x), before, atol=1e-5)
    assert torch.equal(layer.weight, plain.weight) and torch.equal(layer.fused().weight, plain.weight)
    layer.train()
    torch.manual_seed(1)
    noisy = layer(x)
    assert not torch.allclose(noisy, before)  # dropout really acts on the low-rank path in training


def test_inject_touches_only_matched_layers() -> None:
    model = SPAN(SpanConfig(channels=8, blocks=3, scale=2), deploy=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = inject_lora(model, {"block_2.c?_r.eval_conv": LoraSpec(2, 4), "upsampler.0": LoraSpec(4, 4)})
    assert names == ["block_2.c1_r.eval_conv", "block_2.c2_r.eval_conv", "block_2.c3_r.eval_conv", "upsampler.0"]
    wrapped = {n for n, m in model.named_modules() if isinstance(m, LoRAConv2d)}
    assert wrapped == set(names)
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value)  # base tensors untouched, same names
    added = set(after) - set(before)
    assert added == {f"{n}.lora_{ab}" for n in names for ab in "AB"}
    with pytest.raises(ValueError, match="matched no Conv2d"):
        inject_lora(model, {"block_9.*": LoraSpec(1, 1)})


def test_dsclora_student_placement_and_trainable_set() -> None:
    student = DSCLoRA(SpanConfig(channels=8, blocks=6, scale=4))
    wrapped = sorted(n for n, m in student.named_modules() if isinstance(m, LoRAConv2d))
    assert len(wrapped) == 20  # 18 block convs + conv_2 + upsampler (docs/method.md §2)
    assert "conv_1.eval_conv" not in wrapped and "conv_cat" not in wrapped
    trainable = mark_only_lora_trainable(student)
    names = [n for n, p in student.named_parameters() if p.requires_grad]
    assert all(n.endswith(("lora_A", "lora_B")) for n in names) and len(names) == 40
    k, c = 3, 8
    block = (2 * k * c * k) * 2  # A (r·k, in·k) + B (out·k, r·k) at r=2
    tail = 8 * k * c * k + 8 * k * c * k + 8 * k * c * k + 48 * k * 8 * k
    assert trainable == 18 * block + tail


@pytest.mark.parametrize(("channels", "blocks", "scale"), [(26, 6, 4), (12, 2, 2), (10, 4, 3)])
def test_to_deploy_exact_for_training_form_span(channels: int, blocks: int, scale: int) -> None:
    model = realistic(SPAN(SpanConfig(channels=channels, blocks=blocks, scale=scale)))
    deployed = to_deploy(model)
    x = torch.rand(1, 3, 20, 17)
    with torch.no_grad():
        assert (model(x) - deployed(x)).abs().max().item() <= 1e-5
    assert deployed.deploy and count_parameters(deployed) == expected_params(channels, blocks, scale)
    assert conv_statistics(deployed)["macs"] == expected_macs(channels, blocks, scale, 256, 256)


def test_to_deploy_exact_for_dsclora_with_random_factors() -> None:
    base = realistic(SPAN(SpanConfig(channels=26, blocks=6, scale=4)))
    student = DSCLoRA.from_span(base, DSCLoRAConfig(block_rank=4, block_alpha=8, tail_rank=8, tail_alpha=16))
    with torch.no_grad():
        for p in lora_parameters(student):
            p.normal_(0, 0.02)
    merged = to_deploy(student)
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        out_student, out_merged, out_base = student(x), merged(x), base(x)
    assert (out_student - out_merged).abs().max().item() <= 1e-5
    assert (out_student - out_base).abs().max().item() > 1e-3  # the factors really changed the function
    assert count_parameters(merged) == 130_828 == expected_params(26, 6, 4)
    assert conv_statistics(merged)["macs"] == expected_macs(26, 6, 4, 256, 256)
    assert type(merged) is SPAN and not any(isinstance(m, LoRAConv2d) for m in merged.modules())


def test_student_starts_equal_to_teacher() -> None:
    teacher = realistic(SPAN(SpanConfig(channels=8, blocks=2, scale=4)))
    student = DSCLoRA.from_span(teacher)
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        assert (student(x) - teacher(x)).abs().max().item() <= 1e-5


def test_forward_features_are_block_outputs_and_conv2() -> None:
    model = SPAN(SpanConfig(channels=8, blocks=3, scale=2), deploy=True)
    x = torch.rand(1, 3, 10, 10)
    captured = []
    hooks = [b.register_forward_hook(lambda _m, _i, out: captured.append(out[0])) for b in model.blocks]
    hooks.append(model.conv_2.register_forward_hook(lambda _m, _i, out: captured.append(out)))
    sr, features = model.forward_features(x)
    for h in hooks:
        h.remove()
    assert len(features) == 4 and all(torch.equal(a, b) for a, b in zip(features, captured, strict=True))
    assert sr.shape == (1, 3, 20, 20)


@pytest.mark.parametrize(("channels", "blocks", "scale"), [(26, 6, 4), (10, 1, 3)])
def test_fused_span_equals_span_with_fewer_macs(channels: int, blocks: int, scale: int) -> None:
    base = realistic(SPAN(SpanConfig(channels=channels, blocks=blocks, scale=scale)))
    student = DSCLoRA.from_span(base, DSCLoRAConfig(block_rank=2, block_alpha=4, tail_rank=4, tail_alpha=8))
    with torch.no_grad():
        for p in lora_parameters(student):
            p.normal_(0, 0.02)
    fused = FusedSPAN.from_span(student)  # training form with live LoRA factors: deployed on the way
    x = torch.rand(1, 3, 19, 23)
    with torch.no_grad():
        assert (fused(x) - student(x)).abs().max().item() <= 1e-5
    assert not any(isinstance(m, LoRAConv2d) or getattr(m, "deploy", True) is False for m in fused.modules())
    # hand count: conv_2 (9c²) + conv_cat (4c²) become W_t∘conv_2 (9c²), W_h∘conv_1 (27c) and two 1x1 (2c²)
    c = channels
    saved = (4 * c * c - 2 * c * c - 3 * 9 * c) * 256 * 256
    assert conv_statistics(fused)["macs"] == expected_macs(c, blocks, scale, 256, 256) - saved


def test_self_ensemble_is_the_mean_of_eight_hand_transformed_passes() -> None:
    model = realistic(SPAN(SpanConfig(channels=6, blocks=1, scale=2))).eval()
    x = torch.rand(1, 3, 9, 13)  # not square: rotations change the shape
    outputs = []
    with torch.no_grad():
        for flip in (False, True):
            for turns in range(4):
                view = x.flip(3) if flip else x
                out = model(torch.rot90(view, turns, (2, 3)))
                out = torch.rot90(out, -turns, (2, 3))
                outputs.append(out.flip(3) if flip else out)
        expected = torch.stack(outputs).mean(0)
        ensemble = SelfEnsemble(model, 8)
        got = ensemble(x)
        assert got.shape == (1, 3, 18, 26) and (got - expected).abs().max().item() <= 1e-6
        assert (got - model(x)).abs().max().item() > 1e-4  # the network is not equivariant by itself
        # the ensemble is exactly equivariant: transforming the input transforms the output
        assert (ensemble(torch.rot90(x, 1, (2, 3))) - torch.rot90(got, 1, (2, 3))).abs().max().item() <= 1e-5
        assert torch.equal(SelfEnsemble(model, 1)(x), model(x))
    with pytest.raises(ValueError, match="1 or 8"):
        SelfEnsemble(model, 4)
