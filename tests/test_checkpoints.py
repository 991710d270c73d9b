"""Checkpoint formats, config detection, and the weights registry / search path / download."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dsclora import SPAN, DSCLoRA, DSCLoRAConfig, SpanConfig
from dsclora.errors import DscloraError
from dsclora.fs import sha256_file
from dsclora.models.forms import derived_eval_conv_state
from dsclora.models.lora import lora_parameters
from dsclora.weights import registry
from dsclora.weights.checkpoints import detect, load_model, save_model
from dsclora.weights.registry import embedded_weights
from support import official_weight


def test_safetensors_round_trip_keeps_dsclora_config(tmp_path: Path) -> None:
    student = DSCLoRA(SpanConfig(channels=8, blocks=2, scale=3), DSCLoRAConfig(3, 5.0, 6, 7.0))
    with torch.no_grad():
        for p in lora_parameters(student):
            p.normal_()
    path = tmp_path / "student.safetensors"
    save_model(student, path)
    loaded, spec = load_model(path)
    assert spec.arch == "dsclora" and spec.lora == DSCLoRAConfig(3, 5.0, 6, 7.0)  # alpha survives via the JSON
    for key, value in student.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    # Without our metadata the shapes still give ranks; alpha falls back to the paper's 2 x rank.
    from safetensors.torch import save_file

    bare = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in student.state_dict().items()}, str(bare))
    assert load_model(bare)[1].lora == DSCLoRAConfig(3, 6.0, 6, 12.0)


def test_basicsr_training_checkpoint_detected_and_loaded(tmp_path: Path) -> None:
    model = SPAN(SpanConfig(channels=12, blocks=4, scale=2))
    state = {**model.state_dict(), **derived_eval_conv_state(model)}
    noisy = {k: v + 1.0 for k, v in state.items()}
    path = tmp_path / "net_g_1000.pth"
    torch.save({"params": noisy, "params_ema": {f"module.{k}": v for k, v in state.items()}}, path)
    loaded, spec = load_model(path)
    assert (spec.form, spec.span.channels, spec.span.blocks, spec.span.scale) == ("train", 12, 4, 2)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)  # EMA chosen, DDP prefix stripped


@pytest.mark.parametrize(("cin", "cout", "scale"), [(3, 3, 4), (1, 1, 3), (3, 3, 1), (4, 4, 2)])
def test_detect_sizes_from_shapes(cin: int, cout: int, scale: int) -> None:
    cfg = SpanConfig(channels=10, blocks=5, scale=scale, in_channels=cin, out_channels=cout)
    spec = detect(SPAN(cfg, deploy=True).state_dict())
    assert spec.span == cfg and spec.form == "deploy"


def test_mismatched_tensors_give_clear_error(tmp_path: Path) -> None:
    state = SPAN(SpanConfig(channels=8, blocks=2, scale=2), deploy=True).state_dict()
    state["block_2.c2_r.eval_conv.weight"] = torch.zeros(8, 7, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(DscloraError, match="do not fit"):
        load_model(path)
    state = SPAN(SpanConfig(channels=8, blocks=2, scale=2), deploy=True).state_dict()
    state["conv_cat.bias"][0] = float("nan")
    torch.save(state, path)
    with pytest.raises(DscloraError, match="NaN"):
        load_model(path)


def _entry(name: str, sha256: str, url: str = "") -> registry.WeightsEntry:
    return registry.WeightsEntry(name, f"{name}.safetensors", sha256, url, "test", "MIT")


def test_registry_resolves_through_search_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = embedded_weights()
    entry = _entry("w", sha256_file(src))
    monkeypatch.setitem(registry.REGISTRY, "w", entry)
    empty, full = tmp_path / "empty", tmp_path / "full"
    empty.mkdir()
    full.mkdir()
    (full / entry.filename).write_bytes(src.read_bytes())
    monkeypatch.setenv(registry.ENV_VAR, f"{empty}:{full}")
    assert registry.resolve("w") == full / entry.filename
    (empty / entry.filename).write_bytes(b"tampered")
    with pytest.raises(DscloraError, match="sha256"):
        registry.resolve("w")
    monkeypatch.setenv(registry.ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(DscloraError, match="not found"):
        registry.resolve("w")


def test_official_registry_entry_matches_the_file() -> None:
    assert sha256_file(official_weight("dscf")) == registry.REGISTRY["dscf"].sha256


def test_download_verifies_sha256(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = embedded_weights()
    good = _entry("t", sha256_file(src), src.as_uri())
    bad = _entry("b", "0" * 64, src.as_uri())
    monkeypatch.setitem(registry.REGISTRY, "t", good)
    monkeypatch.setitem(registry.REGISTRY, "b", bad)
    monkeypatch.setenv(registry.ENV_VAR, "")
    path = registry.download("t")
    assert path.parent == registry.cache_dir() and sha256_file(path) == good.sha256
    assert registry.resolve("t") == path
    with pytest.raises(DscloraError, match="sha256"):
        registry.download("b")
    assert not (registry.cache_dir() / "b.safetensors").exists()
    assert [p.name for p in registry.cache_dir().iterdir()] == ["t.safetensors"]  # no temp file left behind
