"""SPAN: Conv3XC collapse, the paper's ConvLoRA placement, ``to_deploy``, FusedSPAN, ``norm=False`` and the
self-ensemble, against independent references (hand counts, hand-written forwards)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dsclora import SPAN, LoRAConv2d, SpanConfig, inject
from dsclora.measure.profiling import conv_statistics, count_parameters
from dsclora.models.adapters import adapter_parameters, mark_only_adapters_trainable
from dsclora.models.ensemble import SelfEnsemble
from dsclora.models.span import FusedSPAN, paper_rules, to_deploy, to_train_form
from dsclora.models.span.conv3xc import Conv3XC


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


def test_span_student_is_the_papers_twenty_convs_and_trainable_set() -> None:
    student = SPAN(SpanConfig(channels=8, blocks=6, scale=4), deploy=True)
    wrapped = inject(student, paper_rules())
    assert len(wrapped) == 20  # 18 block convs + conv_2 + upsampler (docs/method.md §2)
    assert "conv_1.eval_conv" not in wrapped and "conv_cat" not in wrapped
    trainable = mark_only_adapters_trainable(student)
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
    student = to_deploy(base)
    inject(student, paper_rules(block_rank=4, block_alpha=8, tail_rank=8, tail_alpha=16))
    with torch.no_grad():
        for p in adapter_parameters(student):
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
    student = to_deploy(teacher)
    inject(student, paper_rules())
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        assert (student(x) - teacher(x)).abs().max().item() <= 1e-5


def hand_forward(model: SPAN, x: torch.Tensor, normalise: bool) -> torch.Tensor:
    """SPAN's forward written out from the paper notes (docs/method.md §1), deploy form, with or without the
    mean shift and x255 of the input."""
    conv = lambda module, t: F.conv2d(t, module.eval_conv.weight, module.eval_conv.bias, padding=1)  # noqa: E731
    if normalise:
        x = (x - torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1)) * 255.0
    head = conv(model.conv_1, x)
    out, act, first = head, head, None
    for block in model.blocks:
        h1 = F.silu(conv(block.c1_r, out))
        h3 = conv(block.c3_r, F.silu(conv(block.c2_r, h1)))
        out, act = (h3 + out) * (torch.sigmoid(h3) - 0.5), h1
        first = out if first is None else first
    tail = conv(model.conv_2, out)
    joined = F.conv2d(torch.cat([head, tail, first, act], 1), model.conv_cat.weight, model.conv_cat.bias)
    up = F.conv2d(joined, model.upsampler[0].weight, model.upsampler[0].bias, padding=1)
    return F.pixel_shuffle(up, model.config.scale)


@pytest.mark.parametrize("norm", [True, False])
def test_forward_and_every_fast_form_follow_the_norm_flag(norm: bool) -> None:
    model = SPAN(SpanConfig(channels=8, blocks=2, scale=2, norm=norm), deploy=True)
    randomise(model, 0.1)
    assert ("no_norm" in model.state_dict()) is not norm  # the marker spandrel / traiNNer-redux files carry
    x = torch.rand(1, 3, 11, 9)
    with torch.no_grad():
        want = hand_forward(model, x, norm)
        assert (model(x) - want).abs().max().item() <= 1e-4 * max(1.0, want.abs().max().item())
        assert (FusedSPAN.from_span(model)(x) - want).abs().max().item() <= 1e-4 * max(1.0, want.abs().max().item())


@pytest.mark.parametrize(("channels", "blocks", "scale"), [(26, 6, 4), (10, 1, 3)])
def test_fused_span_equals_span_with_fewer_macs(channels: int, blocks: int, scale: int) -> None:
    base = realistic(SPAN(SpanConfig(channels=channels, blocks=blocks, scale=scale)))
    student = to_deploy(base)
    inject(student, paper_rules(block_rank=2, block_alpha=4, tail_rank=4, tail_alpha=8))
    with torch.no_grad():
        for p in adapter_parameters(student):
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


def test_trainable_training_form_is_the_same_function_with_every_factor_learning() -> None:
    base = realistic(SPAN(SpanConfig(channels=10, blocks=2, scale=2))).eval()
    deployed = to_deploy(base)
    exact, trainable = to_train_form(deployed), to_train_form(deployed, trainable=True)
    assert torch.equal(to_deploy(exact).conv_2.eval_conv.weight, deployed.conv_2.eval_conv.weight)  # bit for bit
    x = torch.rand(1, 3, 14, 12)
    with torch.no_grad():
        want = deployed(x)
        assert (trainable(x) - want).abs().max().item() <= 1e-5 * max(1.0, want.abs().max().item())
    branches = trainable.block_1.c2_r.conv
    w1, w3 = branches[0].weight[:, :, 0, 0], branches[2].weight[:, :, 0, 0]
    assert torch.allclose(w1.T @ w1, torch.eye(10), atol=1e-5) and torch.allclose(w3 @ w3.T, torch.eye(10), atol=1e-5)
    trainable(x).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in trainable.named_parameters() if "conv." in n)
    exact(x).square().mean().backward()  # the exact form's zero blocks are a saddle: no gradient reaches them
    assert exact.block_1.c2_r.conv[1].weight.grad[10:, 10:].abs().sum() == 0
