"""Spatial-affinity distillation against a hand-written reference, and its invariances."""

from __future__ import annotations

import pytest
import torch

from dsclora.errors import DscloraError
from dsclora.models.span import SPAN, SpanConfig, feature_layers
from dsclora.train.losses import FeatureTap, charbonnier, layer_pairs, pixel_distance, spatial_affinity_loss


def reference_affinity_loss(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """FAKD by the definition, with explicit loops over positions (docs/method.md §2)."""
    b, _, h, w = fs.shape
    n = h * w
    total = torch.zeros((), dtype=torch.float64)
    for k in range(b):
        s = fs[k].reshape(fs.shape[1], n).double()
        t = ft[k].reshape(ft.shape[1], n).double()
        for i in range(n):
            for j in range(n):
                a_s = torch.dot(s[:, i], s[:, j]) / (s[:, i].norm() * s[:, j].norm())
                a_t = torch.dot(t[:, i], t[:, j]) / (t[:, i].norm() * t[:, j].norm())
                total += (a_s - a_t).abs()
    return total / (b * n * n)


def test_matches_hand_written_reference() -> None:
    fs, ft = torch.randn(2, 5, 3, 4), torch.randn(2, 7, 3, 4)  # channel counts may differ (N x N either way)
    expected = reference_affinity_loss(fs, ft)
    for chunk in (1, 5, 12, 1000):
        assert abs(spatial_affinity_loss(fs, ft, chunk=chunk).item() - expected.item()) < 1e-6


def test_zero_for_identical_features_and_positive_otherwise() -> None:
    f = torch.randn(3, 6, 5, 5)
    assert spatial_affinity_loss(f, f.clone()).item() < 1e-7
    assert spatial_affinity_loss(f, torch.randn_like(f)).item() > 0.05


def test_invariant_to_per_position_feature_scaling() -> None:
    fs, ft = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)
    scale = torch.rand(2, 1, 6, 6) * 10 + 0.1  # one positive factor per spatial position
    base = spatial_affinity_loss(fs, ft)
    assert torch.allclose(spatial_affinity_loss(fs * scale, ft), base, atol=1e-6)
    assert torch.allclose(spatial_affinity_loss(fs, ft * scale), base, atol=1e-6)


def test_chunked_gradient_equals_reference_gradient() -> None:
    fs = torch.randn(1, 4, 4, 5, dtype=torch.float64, requires_grad=True)
    ft = torch.randn(1, 4, 4, 5, dtype=torch.float64)
    spatial_affinity_loss(fs, ft, chunk=3).backward()
    chunked = fs.grad.clone()
    fs.grad = None
    reference_affinity_loss(fs, ft).backward()
    assert torch.allclose(chunked, fs.grad, atol=1e-6)


def test_charbonnier_by_hand() -> None:
    a, b = torch.zeros(4), torch.tensor([0.0, 3.0, 4.0, 0.0])
    eps = 1e-3
    expected = (2 * eps + (9 + eps**2) ** 0.5 + (16 + eps**2) ** 0.5) / 4
    assert abs(charbonnier(a, b, eps).item() - expected) < 1e-6


def direct_affinity_l2(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """mean (A_s - A_t)² with the N x N matrices built explicitly (float64)."""
    s = fs.flatten(2).double()
    t = ft.flatten(2).double()
    s = s / s.norm(dim=1, keepdim=True)
    t = t / t.norm(dim=1, keepdim=True)
    diff = s.transpose(1, 2) @ s - t.transpose(1, 2) @ t
    return (diff**2).mean()


def test_l2_affinity_by_gram_products_equals_the_direct_n_by_n_form() -> None:
    fs = torch.randn(2, 5, 6, 7, dtype=torch.float64, requires_grad=True)
    ft = torch.randn(2, 5, 6, 7, dtype=torch.float64)
    got = spatial_affinity_loss(fs, ft, distance="l2")
    expected = direct_affinity_l2(fs, ft)
    assert abs(got.item() - expected.item()) < 1e-12
    (grad_got,) = torch.autograd.grad(got, fs)
    (grad_expected,) = torch.autograd.grad(expected, fs)
    assert torch.allclose(grad_got, grad_expected, atol=1e-12)
    other_width = torch.randn(2, 8, 6, 7, dtype=torch.float64)  # teacher of another width (e.g. ch28 vs 26)
    assert (
        abs(spatial_affinity_loss(fs, other_width, distance="l2").item() - direct_affinity_l2(fs, other_width).item())
        < 1e-12
    )


def test_l2_affinity_stays_accurate_in_fp32_near_the_teacher() -> None:
    """The student starts as its teacher: the naive ‖SSᵀ‖² - 2‖STᵀ‖² + ‖TTᵀ‖² cancels there, ours does not."""
    ft = torch.randn(4, 26, 16, 16)
    fs = ft + 1e-4 * torch.randn_like(ft)
    exact = direct_affinity_l2(fs.double(), ft.double()).item()
    got = spatial_affinity_loss(fs, ft, distance="l2").item()
    assert exact > 0 and abs(got - exact) / exact < 1e-3


def test_pixel_distances_by_hand() -> None:
    a, b = torch.zeros(4), torch.tensor([0.0, 3.0, -4.0, 0.0])
    assert pixel_distance(a, b, "l1").item() == 7 / 4
    assert pixel_distance(a, b, "l2").item() == 25 / 4
    with pytest.raises(ValueError, match="unknown pixel distance"):
        pixel_distance(a, b, "l3")


def test_feature_taps_hold_the_block_outputs_and_conv2_the_paper_compares() -> None:
    model = SPAN(SpanConfig(channels=8, blocks=3, scale=2), deploy=True).eval()
    pairs = layer_pairs([], feature_layers(model.config))
    assert pairs == [("block_1", "block_1"), ("block_2", "block_2"), ("block_3", "block_3"), ("conv_2", "conv_2")]
    assert layer_pairs(["block_2:block_5", "conv_2"], ()) == [("block_2", "block_5"), ("conv_2", "conv_2")]
    tap = FeatureTap(model, [s for s, _ in pairs], "student")
    x = torch.rand(1, 3, 10, 10)
    with torch.no_grad():
        model(x)
        got = tap.take()
        assert tap.take() == {}  # taken once
        tap.remove()
        model(x)
        assert tap.take() == {}  # hooks gone
        # by hand: each block returns (output, silu(c1)); the output is what is compared
        out = model.conv_1(model.normalise(x))
        for i, block in enumerate(model.blocks, start=1):
            out = block(out)[0]
            assert torch.equal(got[f"block_{i}"], out)
        assert torch.equal(got["conv_2"], model.conv_2(out))
    with pytest.raises(DscloraError, match="the teacher has no module 'block_9'"):
        FeatureTap(model, ["block_9"], "teacher")
    with pytest.raises(DscloraError, match="no default feature maps"):
        layer_pairs([], ())
