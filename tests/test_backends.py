"""Inference back-ends and precisions agree with the eager fp32 reference on real images (the embedded model on
photos from scikit-image's wheel: no workspace data needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dsclora.data.benchmark import find_pairs, load_pair
from dsclora.data.images import to_array, to_tensor, to_uint8
from dsclora.errors import DscloraError
from dsclora.measure.metrics import psnr_y
from dsclora.models.span.padding import pad_channels
from dsclora.runtime.autotune import resolve_backend
from dsclora.runtime.backends import make_runner
from dsclora.runtime.tiling import TiledUpscaler
from dsclora.weights.load import load
from dsclora.weights.registry import embedded_weights
from support import lr_photos, make_benchmark


@pytest.fixture(scope="module")
def dscf():
    """The embedded model: a trained SPAN-tiny (C = 26, 6 blocks, x4), like the DSCLoRA release."""
    return load(str(embedded_weights()))


def lr_image(index: int = 0) -> torch.Tensor:
    return lr_photos(3, 64, 80)[index]


@pytest.mark.parametrize("backend", ["torch", "channels_last", "onnxruntime", "compile", "auto"])
def test_exact_backends_match_reference(dscf, backend: str) -> None:
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    x = lr_image()[:, :, :72, :80]
    with torch.no_grad():
        reference = dscf.module(x)
    cpu = torch.device("cpu")
    choice = resolve_backend(dscf, backend, cpu)
    assert choice.backend != "auto"
    runner = make_runner(dscf, choice.backend, cpu, pad=choice.pad)
    assert (runner(x) - reference).abs().max().item() <= 1e-4
    tiled = TiledUpscaler(runner, 4, tile=32, overlap=dscf.receptive_radius)(x)
    assert (tiled - reference).abs().max().item() <= 1e-4


@pytest.mark.parametrize(
    ("backend", "precision", "budget_db"),
    [("channels_last", "bf16", 0.05), ("channels_last", "bf16-accurate", 0.005), ("compile", "bf16-accurate", 0.005)],
)
def test_reduced_precision_psnr_change(dscf, tmp_path, backend: str, precision: str, budget_db: float) -> None:
    runner = make_runner(dscf, backend, torch.device("cpu"), precision)
    ref_runner = make_runner(dscf, "torch", torch.device("cpu"))
    changes = []
    photos = make_benchmark(tmp_path, count=5, height=128, width=128)
    for pair in find_pairs(photos, 4):
        hr, lr = load_pair(pair, 4)
        x = to_tensor(lr)
        sr = to_uint8(to_array(runner(x)))
        ref = to_uint8(to_array(ref_runner(x)))
        changes.append(psnr_y(sr, hr, 4) - psnr_y(ref, hr, 4))
    assert abs(np.mean(changes)) <= budget_db
    assert not np.array_equal(sr, ref)  # the precision really changed the arithmetic


def test_bad_backend_choices(dscf) -> None:
    with pytest.raises(DscloraError, match="fp16 needs a GPU"):
        make_runner(dscf, "torch", torch.device("cpu"), "fp16")
    with pytest.raises(DscloraError, match="unknown backend"):
        make_runner(dscf, "tensorrt", torch.device("cpu"))


@pytest.mark.parametrize("multiple", [8, 16, 32])
def test_channel_padding_is_exact_on_real_images(dscf, multiple: int) -> None:
    padded = pad_channels(dscf.module, multiple)
    assert padded.config.channels == 32 and padded.conv_cat.weight.shape == (32, 128, 1, 1)
    for index in range(3):
        x = lr_image(index)
        with torch.no_grad():
            assert (padded(x) - dscf.module(x)).abs().max().item() <= 1e-6
    runner = make_runner(dscf, "channels_last", torch.device("cpu"), pad=multiple)  # the back-end path too
    x = lr_image()[:, :, :40, :52]
    with torch.no_grad():
        assert (runner(x) - dscf.module(x)).abs().max().item() <= 1e-5
