"""ONNX graphs are right at every size they take: padding stays outside the traced graph, and checks run at a
size where pad amounts frozen by tracing would show (CRAFT's graph was 0.54 off at 72x72 when it had them)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dsclora.cli import main
from dsclora.data.images import check_image
from dsclora.errors import DscloraError
from dsclora.export.onnx import OnnxOptions, export_onnx, onnx_bytes, onnxruntime_session
from dsclora.models.descriptor import ModelDescriptor
from dsclora.runtime.backends import make_runner
from dsclora.weights.load import load
from support import official_weight

pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")


class PadsItselfTo8(nn.Module):
    """x2 toy that reflect-pads to a multiple of 8 the way CRAFT pads to its window (amounts from the shape,
    a Python ``if``), runs a zero-padded conv and crops: without the padding its right and bottom edges change."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 12, 5, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        pad_h, pad_w = (8 - h % 8) % 8, (8 - w % 8) % 8
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        return F.pixel_shuffle(self.conv(x), 2)[..., : 2 * h, : 2 * w]


def toy(size_multiple: int) -> ModelDescriptor:
    return ModelDescriptor(PadsItselfTo8().eval(), "toy", 2, "toy", {}, "toy", size_multiple=size_multiple)


def test_a_single_size_check_misses_frozen_padding_and_two_sizes_catch_it(tmp_path: Path) -> None:
    hidden = toy(1)  # the network pads itself; the descriptor does not know
    probe = check_image()[:, :, :64, :64]
    session = onnxruntime_session(onnx_bytes(hidden.runnable(), OnnxOptions(clamp=False)))
    with torch.no_grad():
        for size, right in (((64, 64), True), ((23, 29), False)):  # the old check: one size, a multiple of 8
            x = probe[:, :, : size[0], : size[1]]
            diff = np.abs(session.run(None, {"input": x.numpy()})[0] - hidden.module(x).numpy()).max()
            assert (diff <= 1e-4) == right, (size, diff)
    out = tmp_path / "toy.onnx"
    with pytest.raises(DscloraError, match=r"at 23x29 .*; not written"):
        export_onnx(hidden, out, probe)
    assert not out.exists() and not list(tmp_path.iterdir())
    with pytest.raises(DscloraError, match="--backend onnxruntime cannot run toy"):
        make_runner(hidden, "onnxruntime", torch.device("cpu"))


def test_declared_multiple_is_padded_outside_the_graph(tmp_path: Path) -> None:
    import onnx

    declared = toy(8)
    out = tmp_path / "toy.onnx"
    export_onnx(declared, out, check_image())
    assert {p.key: p.value for p in onnx.load(str(out)).metadata_props}["size_multiple"] == "8"
    runner = make_runner(declared, "onnxruntime", torch.device("cpu"))
    image = check_image()
    for h, w in ((23, 29), (72, 72), (17, 40)):
        x = torch.cat([image[:, :, :h, :w], image[:, :, -h:, -w:]])
        with torch.no_grad():
            want = declared.module(F.pad(x, (0, -w % 8, 0, -h % 8), mode="reflect"))[..., : 2 * h, : 2 * w]
        assert (runner(x) - want).abs().max().item() <= 1e-4


@pytest.fixture(scope="module")
def craft(tmp_path_factory):
    """CRAFT (spandrel) exported once through the CLI (about a minute here) and its ONNX Runtime runner."""
    weights = official_weight("craft")
    out = tmp_path_factory.mktemp("craft") / "craft.onnx"
    assert main(["export", "--weights", str(weights), "--format", "onnx", "-o", str(out)]) == 0
    described = load(str(weights), network=True)
    return described, out, make_runner(described, "onnxruntime", torch.device("cpu"))


@pytest.mark.parametrize("size", [(23, 29), (72, 72)])
def test_craft_graph_and_runner_equal_torch(craft, size: tuple[int, int]) -> None:
    import onnxruntime as ort

    described, out, runner = craft
    card = json.loads(out.with_suffix(".json").read_text())["resources"][0]
    assert card["inputSizeMultiple"] == 16 and card["inputBatchSize"] == 1
    h, w = size
    x = check_image()[:, :, 30 : 30 + h, 50 : 50 + w]
    with torch.no_grad():
        want = described.runnable()(x)
    padded = F.pad(x, (0, -w % 16, 0, -h % 16), mode="reflect")  # by hand: the graph takes multiples of 16
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": padded.numpy()})[0][..., : 4 * h, : 4 * w]
    assert np.abs(got - want.clamp(0, 1).numpy()).max() <= 1e-4
    assert (runner(x) - want).abs().max().item() <= 1e-4
