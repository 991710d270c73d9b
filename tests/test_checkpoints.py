"""Checkpoint formats, config detection, and the weights registry / search path / download."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dsclora import SPAN, SpanConfig
from dsclora.cli import main
from dsclora.errors import DscloraError
from dsclora.fs import sha256_file
from dsclora.models.adapters import adapter_config, adapter_parameters, inject, merge
from dsclora.models.span import paper_rules
from dsclora.models.span.checkpoint import detect
from dsclora.models.span.forms import derived_eval_conv_state
from dsclora.weights import registry
from dsclora.weights.checkpoints import write_train_state
from dsclora.weights.load import load
from dsclora.weights.registry import embedded_weights
from dsclora.weights.sources.span import save, source_of
from support import official_weight


def student_file(tmp_path: Path, metadata: dict | None) -> tuple[SPAN, Path]:
    """A file as dsclora wrote them before the any-model redesign: a SPAN with live ConvLoRA factors."""
    config = SpanConfig(channels=8, blocks=2, scale=3)
    student = SPAN(config, deploy=True)
    inject(student, paper_rules(3, 5.0, 6, 7.0))
    with torch.no_grad():
        for p in adapter_parameters(student):
            p.normal_(0, 0.1)
    path = tmp_path / "student.safetensors"
    tmp_path.mkdir(exist_ok=True)
    extra = {"dsclora": json.dumps(metadata)} if metadata is not None else {}
    save_file({k: v.contiguous() for k, v in student.state_dict().items()}, str(path), metadata=extra)
    return student, path


def test_adapter_files_load_merged_with_their_recorded_alpha(tmp_path: Path) -> None:
    lora = {"block_rank": 3, "block_alpha": 5.0, "tail_rank": 6, "tail_alpha": 7.0, "dropout": 0.0}
    student, path = student_file(tmp_path, {"arch": "dsclora", "form": "deploy", "span": {}, "lora": lora})
    loaded = load(str(path))
    x = torch.rand(1, 3, 10, 10)
    with torch.no_grad():
        assert (loaded.module(x) - merge(student)(x)).abs().max().item() <= 1e-5
    assert type(loaded.module) is SPAN and "block_1.c1_r.eval_conv.lora_A" not in loaded.module.state_dict()
    # Without the record the factors' alpha is unknown: refused rather than guessed.
    _, bare = student_file(tmp_path / "bare", None)
    with pytest.raises(DscloraError, match="no record of their ranks and α"):
        load(str(bare))


def test_save_then_load_round_trips_exactly(tmp_path: Path) -> None:
    model = SPAN(SpanConfig(channels=8, blocks=2, scale=2, img_range=100.0, norm=False), deploy=True)
    for suffix in (".safetensors", ".pth"):
        path = tmp_path / f"m{suffix}"
        save(model, path)
        loaded = load(str(path)).module
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value)
        assert loaded.config.norm is False
    assert load(str(tmp_path / "m.safetensors")).module.config.img_range == 100.0  # only our format keeps it


def test_basicsr_training_checkpoint_detected_and_loaded(tmp_path: Path) -> None:
    model = SPAN(SpanConfig(channels=12, blocks=4, scale=2))
    state = {**model.state_dict(), **derived_eval_conv_state(model)}
    noisy = {k: v + 1.0 for k, v in state.items()}
    path = tmp_path / "net_g_1000.pth"
    torch.save({"params": noisy, "params_ema": {f"module.{k}": v for k, v in state.items()}}, path)
    stored = load(str(path), merged=False).module
    assert not stored.deploy and (stored.config.channels, stored.config.blocks, stored.config.scale) == (12, 4, 2)
    for key, value in model.state_dict().items():
        assert torch.equal(stored.state_dict()[key], value)  # EMA chosen, DDP prefix stripped
    assert load(str(path)).module.deploy  # loaded for use: collapsed


@pytest.mark.parametrize(("cin", "cout", "scale"), [(3, 3, 4), (1, 1, 3), (3, 3, 1), (4, 4, 2)])
def test_detect_sizes_from_shapes(cin: int, cout: int, scale: int) -> None:
    cfg = SpanConfig(channels=10, blocks=5, scale=scale, in_channels=cin, out_channels=cout)
    layout = detect(SPAN(cfg, deploy=True).state_dict())
    assert layout.config == cfg and not layout.train_form


def test_mismatched_tensors_give_clear_error(tmp_path: Path) -> None:
    state = SPAN(SpanConfig(channels=8, blocks=2, scale=2), deploy=True).state_dict()
    state["block_2.c2_r.eval_conv.weight"] = torch.zeros(8, 7, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(DscloraError, match="do not fit"):
        load(str(path))
    state = SPAN(SpanConfig(channels=8, blocks=2, scale=2), deploy=True).state_dict()
    state["conv_cat.bias"][0] = float("nan")
    torch.save(state, path)
    with pytest.raises(DscloraError, match="NaN"):
        load(str(path))
    state["conv_cat.bias"] = torch.zeros(8, dtype=torch.int64)
    torch.save(state, path)
    with pytest.raises(DscloraError, match=r"conv_cat\.bias is not floating point"):
        load(str(path))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ([1, 2], "must be a JSON object"),
        ({"arch": "span", "span": [1]}, "must be a JSON object"),
        ({"arch": "span", "span": {"blocks": 1_000_000_000}}, "blocks=1000000000, the tensors say 2"),
        ({"arch": "span", "span": {"img_range": 0}}, "img_range must be a positive number"),
        ({"arch": "span", "span": {"img_range": "255"}}, "img_range must be a positive number"),
        ({"arch": "span", "span": {"rgb_mean": [0.1, "x", 0.3]}}, "rgb_mean must be a list of numbers"),
        ({"arch": "span", "span": {"norm": False}}, "norm does not match"),
        ({"arch": "span", "span": {"rgb_mean": [0.1, 0.2]}}, r"rgb_mean must be 3 values in \[0, 1\]"),
        ({"arch": "span", "span": {"rgb_mean": [0.1, 0.2, 0.3, 0.4]}}, "rgb_mean must be 3 values"),
        ({"arch": "span", "span": {"rgb_mean": [0.1, 0.2, 1.5]}}, "rgb_mean must be 3 values"),
        ({"arch": "span", "span": {"rgb_mean": [0.1, 0.2, float("nan")]}}, "rgb_mean must be a list of numbers"),
    ],
)
def test_hostile_embedded_configs_are_refused_before_building(tmp_path: Path, config, message: str) -> None:
    state = SPAN(SpanConfig(channels=8, blocks=2, scale=2), deploy=True).state_dict()
    path = tmp_path / "hostile.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"dsclora": json.dumps(config)})
    with pytest.raises(DscloraError, match=message):
        load(str(path))


def test_a_given_rgb_mean_is_kept_and_the_default_follows_the_channels() -> None:
    assert SpanConfig(rgb_mean=[0.1, 0.2, 0.3]).rgb_mean == (0.1, 0.2, 0.3)
    assert SpanConfig().rgb_mean == (0.4488, 0.4371, 0.4040)  # DIV2K's RGB mean (BasicSR, SPAN's code)
    assert SpanConfig(in_channels=1, out_channels=1).rgb_mean == (0.5,)
    with pytest.raises(ValueError, match="rgb_mean must be 1 values"):
        SpanConfig(in_channels=1, out_channels=1, rgb_mean=(0.4488, 0.4371, 0.4040))


def test_deeply_nested_embedded_config_is_refused_in_one_line(tmp_path: Path) -> None:
    state = SPAN(SpanConfig(channels=8, blocks=2, scale=2), deploy=True).state_dict()
    path = tmp_path / "deep.safetensors"
    deep = "[" * 100_000 + "]" * 100_000
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"dsclora": deep})
    with pytest.raises(DscloraError, match="nested too deeply"):
        load(str(path))


def train_state_file(tmp_path: Path, change: Callable[[dict], object] = lambda info: info) -> tuple[SPAN, Path]:
    """A training state as ``dsclora train`` writes one (a SPAN student with the paper's adapters), its record of
    the network (``model_info``) replaced by what ``change`` makes of it."""
    base = SPAN(SpanConfig(channels=8, blocks=2, scale=2), deploy=True)
    student = copy.deepcopy(base)
    torch.manual_seed(0)
    inject(student, paper_rules(2, 4.0, 3, 6.0))
    with torch.no_grad():
        for p in adapter_parameters(student):
            p.normal_(0, 0.1)
    info = {"source": source_of(base), "train_form": False, "adapters": adapter_config(student)}
    path = tmp_path / "latest.pt"
    write_train_state(path, {"model": student.state_dict(), "ema": None, "model_info": change(info)})
    return student, path


def test_a_training_state_rebuilds_its_student(tmp_path: Path) -> None:
    student, path = train_state_file(tmp_path)
    x = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        assert torch.allclose(load(str(path)).module(x), merge(student)(x), atol=1e-5)


def _set_adapter(name: str, key: str, value: object) -> Callable[[dict], dict]:
    def change(info: dict) -> dict:
        info["adapters"][name][key] = value
        return info

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set_adapter("upsampler.0", "rank", 10**9), "records rank 1000000000 for upsampler.0, which needs"),
        (_set_adapter("upsampler.0", "rank", 2 * 10**6), r"upsampler\.0\.lora_A of shape \(6000000, 24\)"),
        (_set_adapter("conv_2.eval_conv", "rank", 0), "rank must be a whole number >= 1"),
        (_set_adapter("conv_2.eval_conv", "rank", 3.5), "rank must be a whole number >= 1"),
        (_set_adapter("upsampler.0", "alpha", float("nan")), "alpha must be a finite number > 0"),
        (_set_adapter("upsampler.0", "alpha", "16"), "alpha must be a finite number > 0"),
        (_set_adapter("upsampler.0", "dropout", 1.0), r"dropout must be a number in \[0, 1\)"),
        (_set_adapter("upsampler.0", "colour", 1), "must hold rank, alpha and optionally dropout"),
        (lambda info: info | {"adapters": 1}, "model_info.adapters must be a mapping"),
        (lambda info: info | {"adapters": {"upsampler.0": 3}}, r"adapters\['upsampler.0'\] must be a mapping"),
        (lambda info: info | {"adapters": {}}, "stores adapter factors for block_1.c1_r.eval_conv but records no"),
        (lambda info: [1], "model_info. must be a mapping, got list"),
        (lambda info: {"source": info["source"]}, "model_info must hold exactly source, train_form, adapters"),
        (lambda info: info | {"train_form": "no"}, "train_form must be true or false"),
        (lambda info: info | {"source": {"kind": "spec"}}, "its recorded model spec: a model spec is a YAML mapping"),
        (lambda info: info | {"source": {"kind": "spec", "spec": {"code": 1}}}, "needs 'class'"),
        (lambda info: info | {"source": {"kind": ["span"]}}, "must be a mapping naming its kind"),
        (lambda info: info | {"source": {"kind": "resnet"}}, "records a network of unknown kind 'resnet'"),
        (lambda info: info | {"source": {"kind": "span", "config": {"blocks": 10**9}}}, "SPAN config is malformed"),
        (
            lambda info: info | {"adapters": {**info["adapters"], "conv_cat": {"rank": 1, "alpha": 1.0}}},
            "records an adapter on 'conv_cat' but stores no conv_cat.lora_A",
        ),
        (
            lambda info: info | {"adapters": {**info["adapters"], "block_1": {"rank": 1, "alpha": 1.0}}},
            "records an adapter on 'block_1', which is no Conv2d / Linear",
        ),
    ],
)
def test_hostile_training_records_are_refused_before_building(tmp_path: Path, change, message: str) -> None:
    _, path = train_state_file(tmp_path, change)
    with pytest.raises(DscloraError, match=message):
        load(str(path), merged=False)


def test_merge_of_a_training_state_asking_for_a_huge_rank_ends_in_one_line(tmp_path: Path, capsys) -> None:
    _, path = train_state_file(tmp_path, _set_adapter("upsampler.0", "rank", 10**9))
    code = main(["merge", str(path), str(tmp_path / "out.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "records rank 1000000000" in err, err
    assert not (tmp_path / "out.safetensors").exists()


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


def test_files_that_are_no_checkpoint_say_so_in_one_line(tmp_path: Path) -> None:
    text = tmp_path / "notes.pth"
    text.write_text("#!/bin/sh\necho these are not weights\n" * 3)
    with pytest.raises(DscloraError, match=r"notes\.pth: not a checkpoint .*: its bytes are not a PyTorch file"):
        load(str(text))
    pickled = tmp_path / "code.pth"
    torch.save({"weights": torch.zeros(1), "run": Path("x")}, pickled)  # a pickle naming a class to build
    with pytest.raises(DscloraError, match="pickled objects other than tensors"):
        load(str(pickled))
