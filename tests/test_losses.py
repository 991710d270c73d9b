"""Spatial-affinity distillation against a hand-written reference, and its invariances."""

from __future__ import annotations

import torch

from dsclora.losses import charbonnier, spatial_affinity_loss


def reference_affinity_loss(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """FAKD by the definition, with explicit loops over positions (paper-notes §2)."""
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
