"""Official checkpoints: detection, loading, and our forward against an independent functional re-computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dsclora.data.images import read_uint8_rgb
from dsclora.errors import DscloraError
from dsclora.measure.profiling import conv_statistics, count_parameters
from dsclora.models.span.checkpoint import detect
from dsclora.weights.checkpoints import read_checkpoint
from dsclora.weights.load import load
from support import benchmark_set, official_weight


def functional_span(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """SPAN written from the paper's description and the raw tensors, sharing no code with the package.

    Note SiLU before the last block's first-conv output goes to conv_cat (the official in-place SiLU).
    """
    mean = torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1)

    def conv(name: str, t: torch.Tensor) -> torch.Tensor:
        w = sd[f"{name}.weight"]
        return F.conv2d(t, w, sd[f"{name}.bias"], padding=w.shape[-1] // 2)

    h = (x - mean) * 255.0
    f0 = conv("conv_1.eval_conv", h)
    out, outs, act = f0, [], None
    for i in range(1, 7):
        a1 = F.silu(conv(f"block_{i}.c1_r.eval_conv", out))
        a2 = F.silu(conv(f"block_{i}.c2_r.eval_conv", a1))
        a3 = conv(f"block_{i}.c3_r.eval_conv", a2)
        out = (a3 + out) * (torch.sigmoid(a3) - 0.5)
        outs.append(out)
        act = a1
    tail = conv("conv_2.eval_conv", out)
    cat = conv("conv_cat", torch.cat([f0, tail, outs[0], act], 1))
    return F.pixel_shuffle(conv("upsampler.0", cat), 4)


@pytest.mark.parametrize("key", ["dscf", "span-tiny", "span-ch28"])
def test_official_forward_matches_functional_recomputation(key: str) -> None:
    path = official_weight(key)
    model = load(str(path)).module
    sd, _ = read_checkpoint(path)
    lr_dir = benchmark_set("Set5") / "x4" / "LR"
    for img in sorted(lr_dir.glob("*.png"))[:2]:
        lr = read_uint8_rgb(img)
        x = torch.from_numpy(lr.transpose(2, 0, 1).astype(np.float32) / 255.0)[None]
        with torch.no_grad():
            ours, reference = model(x), functional_span(sd, x)
        assert ours.shape == (1, 3, lr.shape[0] * 4, lr.shape[1] * 4)
        assert (ours - reference).abs().max().item() <= 1e-5
        assert 0.2 < ours.mean().item() < 0.8  # a real image comes out as an image, not noise


@pytest.mark.parametrize(
    ("key", "channels", "params"), [("dscf", 26, 130_828), ("span-tiny", 26, 130_828), ("span-ch28", 28, 150_688)]
)
def test_official_detection_and_counts(key: str, channels: int, params: int) -> None:
    loaded = load(str(official_weight(key)))
    model, config = loaded.module, loaded.module.config
    assert (loaded.arch, model.deploy, config.channels, config.blocks, loaded.scale) == ("span", True, channels, 6, 4)
    assert loaded.receptive_radius == 21
    assert count_parameters(model) == params  # the README of ../shared/weights lists these sums
    stats = conv_statistics(model)
    assert stats["convs"] == 22
    if key == "dscf":
        # NTIRE 2025 ESR report for the DSCLoRA entry: 8.54 G FLOPs (fvcore MACs), 38.93 M activations.
        assert round(stats["macs"] / 1e9, 2) == 8.54
        assert round(stats["activations"] / 1e6, 2) == 38.93


def test_dscf_differs_from_its_base_only_where_dsclora_adapts() -> None:
    """The released DSCLoRA vs SPAN-tiny: only the 20 adapted 3x3 weights changed (docs/method.md §2).

    The other tensors differ by float rounding only (relative ~1e-6, from re-parameterising), the adapted
    ones by 1e-4 .. 1e-2 relative.
    """
    dscf, _ = read_checkpoint(official_weight("dscf"))
    base, _ = read_checkpoint(official_weight("span-tiny"))
    relative = {k: ((dscf[k] - base[k]).abs().max() / base[k].abs().max()).item() for k in dscf}
    changed = {k for k, r in relative.items() if r > 1e-4}
    assert max(r for k, r in relative.items() if k not in changed) < 2e-5
    adapted = {f"block_{i}.c{j}_r.eval_conv.weight" for i in range(1, 7) for j in (1, 2, 3)}
    adapted |= {"conv_2.eval_conv.weight", "upsampler.0.weight"}
    assert changed == adapted


@pytest.mark.parametrize(("key", "message"), [("spanf", "SPAN-F"), ("espan", "ESPAN"), ("team46", "variant")])
def test_unsupported_official_files_are_named(key: str, message: str) -> None:
    with pytest.raises(DscloraError, match=message):
        load(str(official_weight(key)))


def test_basicsr_wrapper_prefers_ema() -> None:
    state, _ = read_checkpoint(official_weight("team46"))
    raw = torch.load(official_weight("team46"), map_location="cpu", weights_only=True)
    assert all(torch.equal(state[k], raw["params_ema"][k]) for k in raw["params_ema"])
    with pytest.raises(DscloraError):
        detect(state)
