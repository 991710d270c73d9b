"""Inference back-ends and precisions agree with the eager fp32 reference on real images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import benchmark_set, official_weight
from dsclora.backends import make_runner
from dsclora.checkpoints import load_model
from dsclora.data.benchmark import find_pairs, load_pair
from dsclora.data.io import to_uint8
from dsclora.errors import DscloraError
from dsclora.inference import tiled_forward
from dsclora.metrics import psnr_y


@pytest.fixture(scope="module")
def dscf():
    return load_model(official_weight("dscf"))[0]


def lr_image(index: int = 0) -> torch.Tensor:
    path = sorted((benchmark_set("Set5") / "x4" / "LR").glob("*.png"))[index]
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1).copy()).float()[None] / 255


@pytest.mark.parametrize("backend", ["torch", "channels_last", "onnxruntime", "compile", "auto"])
def test_exact_backends_match_reference(dscf, backend: str) -> None:
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    x = lr_image()[:, :, :72, :80]
    with torch.no_grad():
        reference = dscf(x)
    runner, name = make_runner(dscf, backend, torch.device("cpu"))
    assert name != "auto"
    assert (runner(x) - reference).abs().max().item() <= 1e-4
    tiled = tiled_forward(runner, x, 4, tile=32, overlap=dscf.config.receptive_radius)
    assert (tiled - reference).abs().max().item() <= 1e-4


@pytest.mark.parametrize(
    ("backend", "precision", "budget_db"),
    [("channels_last", "bf16", 0.05), ("channels_last", "bf16-accurate", 0.005), ("compile", "bf16-accurate", 0.005)],
)
def test_reduced_precision_psnr_change_on_set5(dscf, backend: str, precision: str, budget_db: float) -> None:
    runner, _ = make_runner(dscf, backend, torch.device("cpu"), precision)
    ref_runner, _ = make_runner(dscf, "torch", torch.device("cpu"))
    changes = []
    for pair in find_pairs(benchmark_set("Set5"), 4):
        hr, lr = load_pair(pair, 4)
        x = torch.from_numpy(lr.transpose(2, 0, 1).astype(np.float32) / 255)[None]
        sr = to_uint8(runner(x)[0].permute(1, 2, 0).numpy())
        ref = to_uint8(ref_runner(x)[0].permute(1, 2, 0).numpy())
        changes.append(psnr_y(sr, hr, 4) - psnr_y(ref, hr, 4))
    assert abs(np.mean(changes)) <= budget_db
    assert not np.array_equal(sr, ref)  # the precision really changed the arithmetic


def test_bad_backend_choices(dscf) -> None:
    with pytest.raises(DscloraError, match="fp16 needs a GPU"):
        make_runner(dscf, "torch", torch.device("cpu"), "fp16")
    with pytest.raises(DscloraError, match="unknown backend"):
        make_runner(dscf, "tensorrt", torch.device("cpu"))
