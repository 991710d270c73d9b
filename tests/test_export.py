"""Exports other tools load, each run in that tool: ONNX Runtime, spandrel, ncnn, the NTIRE kit's loader."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dsclora.cli import main
from dsclora.data.benchmark import find_pairs, load_pair
from dsclora.data.images import to_array, to_tensor, to_uint8
from dsclora.fs import sha256_file
from dsclora.measure.metrics import psnr_y
from dsclora.weights import registry
from dsclora.weights.load import load
from dsclora.weights.registry import embedded_weights
from dsclora.weights.sources.spandrel import import_spandrel
from support import lr_photos, make_benchmark, official_weight


def real_lr(n: int = 2) -> list[torch.Tensor]:
    """Real LR images of Set5's typical sizes: MATLAB-bicubic x1/4 photo crops."""
    return lr_photos(n, 64, 76)


def test_onnx_export_matches_torch_on_real_images(tmp_path: Path, capsys) -> None:
    ort = pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    out = tmp_path / "dsclora.onnx"
    assert main(["export", "--format", "onnx", "-o", str(out)]) == 0
    assert "ONNX Runtime vs torch" in capsys.readouterr().out
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["scale"] == "4"
    model = load(str(embedded_weights())).module
    images = real_lr()
    batch = torch.cat([img[:, :, :60, :44] for img in images])  # dynamic batch and a non-square size
    for x in [*images, batch]:
        got = session.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            want = model(x).clamp(0, 1).numpy()  # the file clamps its output, the network does not
        assert got.shape == want.shape and np.abs(got - want).max() <= 1e-4
        assert got.min() >= 0 and got.max() <= 1
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["architecture"] == "span" and card["scale"] == 4 and card["size"] == ["26nf", "6nb"]
    assert card["resources"][0]["sha256"] == sha256_file(out) and card["resources"][0]["type"] == "onnx"
    shipped = json.loads(embedded_weights().with_suffix(".json").read_text())
    for key in ("license", "dataset", "teacher", "trainingIterations"):  # carried over from the weights' own card
        assert card[key] == shipped[key], key


def test_onnx_card_facts_come_from_the_registry_entry(tmp_path: Path) -> None:
    official_weight("dscf")
    out = tmp_path / "dscf.onnx"
    assert main(["export", "--weights", "dscf", "--format", "onnx", "-o", str(out), "--no-simplify"]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    entry = registry.REGISTRY["dscf"]
    assert (card["license"], card["source"], card["description"]) == (entry.license, entry.url, entry.description)


def test_fp16_onnx_within_a_hundredth_of_a_db(tmp_path: Path, capsys) -> None:
    ort = pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    fp32, fp16, static = tmp_path / "fp32.onnx", tmp_path / "fp16.onnx", tmp_path / "static.onnx"
    assert main(["export", "--format", "onnx", "-o", str(fp32)]) == 0
    assert main(["export", "--format", "onnx", "--precision", "fp16", "-o", str(fp16)]) == 0
    assert main(["export", "--format", "onnx", "--precision", "fp16", "--io", "fp16", "--static", "40x48",
                 "-o", str(static)]) == 0  # fmt: skip
    assert fp16.stat().st_size < 0.6 * fp32.stat().st_size  # half-precision weights
    sessions = {p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32, fp16)}
    changes = []
    for pair in find_pairs(make_benchmark(tmp_path / "bench", count=5, height=128, width=112), 4):
        hr, lr = load_pair(pair, 4)
        x = to_tensor(lr).numpy()
        psnr = {p: psnr_y(to_uint8(to_array(torch.from_numpy(s.run(None, {"input": x})[0]))), hr, 4)
                for p, s in sessions.items()}  # fmt: skip
        changes.append(psnr[fp16] - psnr[fp32])
    assert abs(np.mean(changes)) <= 0.01 and any(c != 0 for c in changes)
    session = ort.InferenceSession(str(static), providers=["CPUExecutionProvider"])
    (meta,) = session.get_inputs()
    assert meta.shape == [1, 3, 40, 48] and meta.type == "tensor(float16)"
    out = session.run(None, {"input": real_lr(1)[0][:, :, :40, :48].numpy().astype(np.float16)})[0]
    assert out.shape == (1, 3, 160, 192) and out.dtype == np.float16


def test_ntire_module_runs_without_dsclora(tmp_path: Path, capsys) -> None:
    kit = tmp_path / "kit"
    assert main(["export", "--format", "ntire", "--team", "7", "--name", "DSCLoRAx4", "-o", str(kit)]) == 0
    module, weights = kit / "team07_DSCLoRAx4.py", kit / "team07_DSCLoRAx4.pth"
    text = module.read_text()
    assert "import dsclora" not in text and "from dsclora" not in text
    x = real_lr(1)[0][:, :, :40, :52]
    np.save(tmp_path / "x.npy", x.numpy())
    # The kit's way, in a fresh interpreter where importing dsclora is impossible: import the module by path,
    # build the class with its defaults, load the .pth strictly, run.
    script = f"""
import sys, importlib.util, numpy, torch
sys.modules["dsclora"] = None
spec = importlib.util.spec_from_file_location("team07_DSCLoRAx4", {str(module)!r})
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
net = mod.DSCLoRAx4()
net.load_state_dict(torch.load({str(weights)!r}, weights_only=True), strict=True)
with torch.no_grad():
    out = net.eval()(torch.from_numpy(numpy.load({str(tmp_path / "x.npy")!r})))
numpy.save({str(tmp_path / "y.npy")!r}, out.numpy())
"""
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    with torch.no_grad():
        want = load(None).module(x).numpy()
    assert np.abs(np.load(tmp_path / "y.npy") - want).max() <= 1e-6
    bad_names = {
        "1bad": "identifier",
        "class": "keyword",
        "print": "built-in",
        "torch": "already uses",
        "Block": "already uses",
    }
    for name, message in bad_names.items():
        argv = ["export", "--format", "ntire", "-o", str(tmp_path / "k2"), "--team", "5", "--name", name]
        assert main(argv) == 2 and message in capsys.readouterr().err
        assert not (tmp_path / "k2" / f"team05_{name}.py").exists()
    assert main(["export", "--format", "ntire", "-o", str(tmp_path / "k2"), "--team", "5"]) == 2
    assert "--name" in capsys.readouterr().err


def test_ncnn_export_matches_torch(tmp_path: Path, capsys) -> None:
    pytest.importorskip("pnnx", reason="pnnx (the [ncnn] extra) is not installed")
    pytest.importorskip("ncnn", reason="ncnn's Python binding (the [ncnn] extra) is not installed")
    from dsclora.export.ncnn import run_ncnn

    out = tmp_path / "ncnn" / "model"
    assert main(["export", "--format", "ncnn", "-o", str(out)]) == 0
    param, weights = out.with_name("model.param"), out.with_name("model.bin")
    assert param.is_file() and weights.is_file() and not list(Path.cwd().glob("*.pnnx.*"))
    model = load(None).module
    for x in real_lr(2):  # other sizes than the export traced
        with torch.no_grad():
            assert (run_ncnn(param, weights, x) - model(x)).abs().max().item() <= 1e-4
    card = json.loads((tmp_path / "ncnn" / "model.json").read_text())
    assert [r["type"] for r in card["resources"]] == ["param", "bin"]
    assert [r["sha256"] for r in card["resources"]] == [sha256_file(param), sha256_file(weights)]


@pytest.mark.parametrize("suffix", ["pth", "safetensors"])
def test_spandrel_loads_our_export_and_gives_our_outputs(tmp_path: Path, suffix: str) -> None:
    spandrel = import_spandrel()
    if spandrel is None:
        pytest.skip("spandrel (the [spandrel] extra) is not installed")
    out = tmp_path / f"dsclora_spandrel.{suffix}"
    assert main(["export", "--format", "spandrel", "-o", str(out)]) == 0
    descriptor = spandrel.ModelLoader().load_from_file(str(out))
    assert descriptor.architecture.id == "SPAN" and descriptor.scale == 4
    ours = load(str(embedded_weights())).module
    for x in real_lr():
        with torch.no_grad():
            assert (descriptor.model.eval()(x) - ours(x)).abs().max().item() <= 1e-5


@pytest.mark.parametrize(("fmt", "name"), [("onnx", "m.onnx"), ("spandrel", "m.pth"), ("safetensors", "m.safetensors")])
def test_export_of_bad_checkpoint_writes_nothing(tmp_path: Path, capsys, fmt: str, name: str) -> None:
    bad = tmp_path / "espan_like.pth"
    torch.save({"conv_near.weight": torch.zeros(48, 1, 3, 3)}, bad)
    out = tmp_path / "out" / name
    assert main(["export", "--weights", str(bad), "--format", fmt, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "SPAN-F" in err
    assert not out.parent.exists()


def test_no_norm_span_from_spandrel_files_is_computed_unnormalised(tmp_path: Path, capsys) -> None:
    """spandrel / traiNNer-redux save SPAN(norm=False) with a ``no_norm`` tensor: no mean shift, no x255."""
    path = tmp_path / "span_tiny_train.pth"
    assert main(["export", "--weights", str(official_weight("span-tiny")), "--format", "spandrel", "-o", str(path),
                 "--no-card"]) == 0  # fmt: skip
    state = torch.load(path, weights_only=True)
    state["no_norm"] = torch.zeros(1)
    no_norm = tmp_path / "no_norm.pth"
    torch.save(state, no_norm)
    loaded = load(str(no_norm)).module
    assert loaded.config.norm is False
    x = real_lr(1)[0][:, :, :24, :28]
    sd = load(str(official_weight("span-tiny"))).module.state_dict()
    from test_official import functional_span

    with torch.no_grad():
        # the hand-written forward with the normalisation undone: feed it x / 255 + mean
        mean = torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1)
        want = functional_span(sd, x / 255.0 + mean)
        assert (loaded(x) - want).abs().max().item() <= 1e-4
        assert (loaded(x) - load(str(official_weight("span-tiny"))).module(x)).abs().max().item() > 0.1
    # every export keeps it: the NTIRE module and the spandrel file compute the same function
    kit = tmp_path / "kit"
    assert main(["export", "--weights", str(no_norm), "--format", "ntire", "--team", "1", "--name", "NoNorm",
                 "-o", str(kit), "--no-card"]) == 0  # fmt: skip
    again = tmp_path / "again.safetensors"
    assert main(["export", "--weights", str(no_norm), "--format", "spandrel", "-o", str(again), "--no-card"]) == 0
    reread = load(str(again)).module
    with torch.no_grad():
        assert reread.config.norm is False and (reread(x) - loaded(x)).abs().max().item() <= 1e-5


def test_ntire_export_on_a_full_disk_is_one_line_and_leaves_no_folder(tmp_path: Path, capsys, monkeypatch) -> None:
    """torch.save on a full disk says only "unexpected pos": the export recognises the full disk and removes the
    folders it made."""
    import dsclora.export.ntire as ntire

    def full_disk_save(*_args, **_kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 180480 vs 180408")

    monkeypatch.setattr(ntire.torch, "save", full_disk_save)
    monkeypatch.setattr("dsclora.fs.nearly_full", lambda _folder: True)
    out = tmp_path / "sub" / "deep"
    code = main(["export", "--format", "ntire", "--team", "5", "--name", "X", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("dsclora: error: no space left on device for ") and err.count("\n") == 1
    assert "team05_X.pth was not written" in err
    assert list(tmp_path.iterdir()) == []  # neither deep/ nor sub/


def test_a_network_onnx_cannot_express_is_refused_in_one_line(tmp_path: Path) -> None:
    """Adaptive pooling to a size computed from the input (SAFMNv3 does this) has no ONNX form: one line, not the
    exporter's graph dump, and the onnxruntime back-end refuses the same way (so auto skips it)."""
    pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    from dsclora.errors import DscloraError
    from dsclora.export.onnx import onnx_bytes
    from dsclora.models.descriptor import ModelDescriptor
    from dsclora.runtime.backends import make_runner

    class InputSizedPooling(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 12, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            pooled = torch.nn.functional.adaptive_max_pool2d(self.conv(x), (x.shape[2] // 8, x.shape[3] // 8))
            up = torch.nn.functional.interpolate(pooled, size=x.shape[2:]) + self.conv(x)
            return torch.nn.functional.pixel_shuffle(up, 2)

    with pytest.raises(DscloraError, match="InputSizedPooling cannot be exported to ONNX: ") as error:
        onnx_bytes(InputSizedPooling())
    assert "\n" not in str(error.value) and "graph(" not in str(error.value)
    toy = ModelDescriptor(InputSizedPooling().eval(), "toy", 2, "toy", {}, "toy")
    with pytest.raises(DscloraError):
        make_runner(toy, "onnxruntime", torch.device("cpu"))
