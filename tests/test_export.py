"""Exports other tools load: ONNX (checked in ONNX Runtime) and spandrel-compatible training-form SPAN files."""

from __future__ import annotations

import enum
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import benchmark_set, official_weight
from dsclora.checkpoints import load_model
from dsclora.cli import main


def real_lr(n: int = 2) -> list[torch.Tensor]:
    files = sorted((benchmark_set("Set5") / "x4" / "LR").glob("*.png"))[:n]
    return [
        torch.from_numpy(np.asarray(Image.open(f).convert("RGB")).transpose(2, 0, 1).copy()).float()[None] / 255
        for f in files
    ]


def test_onnx_export_matches_torch_on_real_images(tmp_path: Path, capsys) -> None:
    ort = pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    official_weight("dscf")
    out = tmp_path / "dscf.onnx"
    assert main(["export", "--weights", "dscf", "--format", "onnx", "-o", str(out)]) == 0
    assert "max abs diff" in capsys.readouterr().out
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    model, _ = load_model(official_weight("dscf"))
    images = real_lr()
    batch = torch.cat([img[:, :, :60, :44] for img in images])  # dynamic batch and a non-square size
    for x in [*images, batch]:
        got = session.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            want = model(x).numpy()
        assert got.shape == want.shape and np.abs(got - want).max() <= 1e-4


def _stub_torchvision() -> None:
    """spandrel imports torchvision for two unrelated architectures (LaMa, RestoreFormer); its SPAN does not use
    it, and PyPI's torchvision is a CUDA build that cannot load here. A stub satisfies those imports."""
    if "torchvision" in sys.modules:
        return
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.InterpolationMode = enum.Enum("InterpolationMode", "NEAREST BILINEAR BICUBIC")

    def unavailable(*_args, **_kwargs):
        raise RuntimeError("torchvision stub")

    functional.rotate = functional.normalize = unavailable
    transforms = types.ModuleType("torchvision.transforms")
    transforms.functional = functional
    root = types.ModuleType("torchvision")
    root.transforms = transforms
    sys.modules.update(
        {"torchvision": root, "torchvision.transforms": transforms, "torchvision.transforms.functional": functional}
    )


@pytest.mark.parametrize("suffix", ["pth", "safetensors"])
def test_spandrel_loads_our_export_and_gives_our_outputs(tmp_path: Path, suffix: str) -> None:
    pytest.importorskip("einops", reason="spandrel (optional test dependency) needs einops")
    _stub_torchvision()
    spandrel = pytest.importorskip("spandrel", reason="spandrel is an optional test dependency")
    official_weight("dscf")
    out = tmp_path / f"dscf_spandrel.{suffix}"
    assert main(["export", "--weights", "dscf", "--format", "spandrel", "-o", str(out)]) == 0
    descriptor = spandrel.ModelLoader().load_from_file(str(out))
    assert descriptor.architecture.id == "SPAN" and descriptor.scale == 4
    ours, _ = load_model(official_weight("dscf"))
    for x in real_lr():
        with torch.no_grad():
            assert (descriptor.model.eval()(x) - ours(x)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("fmt", ["onnx", "spandrel", "safetensors"])
def test_export_of_bad_checkpoint_writes_nothing(tmp_path: Path, capsys, fmt: str) -> None:
    bad = tmp_path / "espan_like.pth"
    torch.save({"conv_near.weight": torch.zeros(48, 1, 3, 3)}, bad)
    out = tmp_path / "out" / "model.bin"
    assert main(["export", "--weights", str(bad), "--format", fmt, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "SPAN-F" in err
    assert not out.parent.exists()
