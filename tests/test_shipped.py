"""The weights this project trained and ships inside the package: small, loadable, the offline default."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dsclora.cli import main
from dsclora.fs import sha256_file
from dsclora.weights.load import load
from dsclora.weights.registry import embedded_weights, resolve

CARD = Path(__file__).resolve().parents[1] / "src" / "dsclora" / "assets" / "MODEL_CARD.md"


def test_embedded_model_is_a_plain_span_tiny_under_1mb() -> None:
    path = embedded_weights()
    assert path.stat().st_size < 1_000_000
    loaded = load(str(path))
    model, config = loaded.module, loaded.module.config
    assert (loaded.arch, model.deploy, config.channels, config.blocks, loaded.scale) == ("span", True, 26, 6, 4)
    assert sum(p.numel() for p in model.parameters()) == 130_828
    assert resolve("default") == path and load(None).path == path


def test_model_card_names_the_shipped_file_by_hash() -> None:
    card = CARD.read_text()
    digest = re.search(r"sha256 `([0-9a-f]{64})`", card)
    assert digest and digest.group(1) == sha256_file(embedded_weights())
    for needed in ("Base checkpoint", "Licence", "Data", "Recipe", "Metrics", "Reproduce"):
        assert needed in card


def test_upscale_without_weights_runs_offline(tmp_path: Path, monkeypatch, capsys, sample_photo) -> None:
    monkeypatch.setenv("DSCLORA_WEIGHTS_DIR", str(tmp_path / "empty"))  # no official checkpoints reachable
    src = tmp_path / "photo.png"
    Image.fromarray(sample_photo[200:248, 200:264]).save(src)
    assert main(["upscale", str(src), "-o", str(tmp_path / "out"), "--backend", "torch"]) == 0, capsys.readouterr().err
    result = np.asarray(Image.open(tmp_path / "out" / "photo.png")).astype(int)
    model = load(str(embedded_weights())).module
    x = torch.from_numpy(np.asarray(Image.open(src)).transpose(2, 0, 1).astype(np.float32) / 255)[None]
    with torch.no_grad():
        expected = np.floor(model(x)[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(int)
    assert result.shape == (192, 256, 3) and np.abs(result - expected).max() <= 1


def test_model_card_metrics_are_what_eval_measures(capsys, tmp_path: Path) -> None:
    """The card's Set5 row is what `dsclora eval` prints for the embedded model now."""
    from support import benchmark_set

    row = re.search(r"\| Set5 \| ([0-9.]+) / ([0-9.]+) \|", CARD.read_text())
    report = tmp_path / "e.json"
    assert main(["eval", "--data", str(benchmark_set("Set5")), "--json", str(report)]) == 0
    import json

    measured = json.loads(report.read_text())["datasets"][0]
    assert row and f"{measured['psnr_y']:.3f}" == row.group(1) and f"{measured['ssim_y']:.4f}" == row.group(2)
