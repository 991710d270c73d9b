"""Any network, loaded as a user would: the NTIRE kits' own model files through spec files (configs/models/),
CRAFT through spandrel. Checked against the figures ../shared/weights/README.md measured with each network's
own code, against the networks' own classes (merged weights load strictly), and through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from dsclora.cli import main
from dsclora.data.images import probe_image
from dsclora.measure.evaluate import evaluate_dataset
from dsclora.measure.profiling import conv_statistics, count_parameters
from dsclora.models.adapters import AdapterSpec, adapter_parameters, inject, merge
from dsclora.models.receptive import measure_receptive_radius
from dsclora.runtime.tiling import TiledUpscaler
from dsclora.weights.load import load
from dsclora.weights.sources.spandrel import import_spandrel
from dsclora.weights.sources.specfile import build_module, read_spec
from support import REPO, SHARED, benchmark_set, official_weight

SPECS = REPO / "configs" / "models"
# spec file: (scale, Set5 Y-PSNR measured with the network's own code: ../shared/weights/README.md)
PUBLISHED = {
    "spanv2.yaml": (4, 31.77),
    "safmnv3.yaml": (4, 32.04),
    "rlfn.yaml": (4, 32.10),  # input in [0, 255]; its file holds CUDA tensors
    "rlfn_s_x4.yaml": (4, 32.24),
    "rlfn_s_x2.yaml": (2, 38.05),
    "haesr.yaml": (4, 32.46),  # input padded to a multiple of 8; weights under params_ema
}


def spec_path(name: str) -> Path:
    if not (SHARED / "models").is_dir() or not (SHARED / "weights").is_dir():
        pytest.skip(f"the model files and weights of {name} are not in {SHARED} (set DSCLORA_SHARED)")
    if name == "haesr.yaml":
        pytest.importorskip("einops", reason="HAESR's own file imports einops")
    return SPECS / name


def probe(size: int = 28) -> torch.Tensor:
    """A smooth image (SAFMNv3 gives NaN on uniform noise of any size; real images behave)."""
    return probe_image(size, size + 6)


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_spec_files_reproduce_the_published_set5_figures(name: str) -> None:
    scale, published = PUBLISHED[name]
    loaded = load(str(spec_path(name)))
    assert loaded.scale == scale
    result = evaluate_dataset(loaded.runnable(), benchmark_set("Set5") / f"x{scale}", scale, progress=False)
    assert abs(result["psnr_y"] - published) <= 0.01, result["psnr_y"]


def test_craft_through_spandrel_equals_spandrels_own_call() -> None:
    spandrel = import_spandrel()
    if spandrel is None:
        pytest.skip("spandrel (the [spandrel] extra) is not installed")
    path = official_weight("craft")
    loaded = load(str(path))
    assert (loaded.arch, loaded.scale, loaded.size_multiple) == ("CRAFT", 4, 16)
    reference = spandrel.ModelLoader().load_from_file(str(path)).eval()
    x = probe(23)  # not a multiple of 16: both pad, crop back
    with torch.no_grad():
        ours, theirs = loaded.runnable()(x), reference(x)  # spandrel's call clamps its output to [0, 1]
    assert ours.shape == (1, 3, 92, 116) and (ours.clamp(0, 1) - theirs).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", ["spanv2.yaml", "safmnv3.yaml", "rlfn.yaml", "rlfn_s_x2.yaml"])
def test_merged_adapters_load_strictly_into_the_networks_own_class(tmp_path: Path, name: str) -> None:
    loaded = load(str(spec_path(name)))
    adapted = loaded.module
    base_params, base_macs = count_parameters(adapted), conv_statistics(loaded.runnable())["macs"]
    inject(adapted, [("*", AdapterSpec(4, 8))])
    with torch.no_grad():
        for p in adapter_parameters(adapted):
            p.normal_(0, 0.02)
    merged = merge(adapted)
    files = loaded.saver(merged, tmp_path / "merged.pth")
    assert [f.name for f in files] == ["merged.yaml", "merged.pth"]  # the file to load first
    own = build_module(read_spec(spec_path(name)))  # the author's class, as the author's code builds it
    own.load_state_dict(torch.load(files[1], weights_only=True), strict=True)
    x = probe()
    with torch.no_grad():
        want = loaded.runnable(adapted.eval())(x)
        assert (loaded.runnable(own.eval())(x) - want).abs().max().item() <= 1e-5
        assert (load(str(files[0])).runnable()(x) - want).abs().max().item() <= 1e-5  # the spec written beside
        assert (want - load(str(spec_path(name))).runnable()(x)).abs().max().item() > 1e-4  # it really changed
    assert count_parameters(own) == base_params and conv_statistics(loaded.runnable(own))["macs"] == base_macs


def test_receptive_radius_is_measured_where_unknown_and_makes_tiling_exact() -> None:
    span = load(str(official_weight("span-tiny")))
    assert measure_receptive_radius(span.runnable()) == span.receptive_radius == 21  # 3·blocks + 3, by hand
    assert measure_receptive_radius(load(str(spec_path("safmnv3.yaml"))).runnable()) is None  # global variance
    spanv2 = load(str(spec_path("spanv2.yaml")))
    radius = measure_receptive_radius(spanv2.runnable())
    assert radius is not None and 0 < radius < 40
    x = torch.rand(1, 3, 70, 90, generator=torch.Generator().manual_seed(2))
    net = spanv2.runnable()
    with torch.no_grad():
        whole = net(x)
        assert (TiledUpscaler(net, 4, tile=32, overlap=radius)(x) - whole).abs().max().item() <= 1e-5
        assert (TiledUpscaler(net, 4, tile=32, overlap=radius // 2)(x) - whole).abs().max().item() > 1e-4


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_every_command_takes_a_spec_file(tmp_path: Path, capsys) -> None:
    ort = pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    spec = str(spec_path("spanv2.yaml"))
    code, out, err = run_cli(capsys, "eval", "--weights", spec, "--data", str(benchmark_set("Set5")))
    assert code == 0, err
    assert "31.770" in out
    report = tmp_path / "p.json"
    code, _, err = run_cli(capsys, "profile", "--weights", spec, "--runs", "1", "--json", str(report))
    figures = json.loads(report.read_text())
    assert code == 0 and figures["architecture"] == "SPANV2_ESR" and figures["params"] == 139_104
    assert figures["flops_macs"] == conv_statistics(load(spec).runnable())["macs"]
    lr = benchmark_set("Set5") / "x4" / "LR" / "img_001.png"
    code, _, err = run_cli(capsys, "upscale", str(lr), "-o", str(tmp_path / "up"), "--weights", spec, "--tile", "48")
    assert code == 0 and "receptive radius measured" in err, err
    onnx = tmp_path / "spanv2.onnx"
    code, _, err = run_cli(capsys, "export", "--weights", spec, "--format", "onnx", "-o", str(onnx))
    assert code == 0, err
    x = probe()
    got = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - load(spec).runnable()(x).clamp(0, 1).numpy()).max() <= 1e-4
    code, _, err = run_cli(capsys, "export", "--weights", spec, "--format", "spandrel", "-o", str(tmp_path / "s.pth"))
    assert code == 2 and "training form" in err and len(err.strip().splitlines()) == 1


def test_ntire_export_of_a_spec_file_network_runs_in_a_clean_python(tmp_path: Path, capsys) -> None:
    spec = str(spec_path("spanv2.yaml"))
    code, out, err = run_cli(
        capsys, "export", "--weights", spec, "--format", "ntire", "--team", "22", "--name", "SPANV2x4", "-o",
        str(tmp_path / "kit"),
    )  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "kit" / "team22_SPANV2x4.py").is_file() and "clean Python" in out
    code, _, err = run_cli(
        capsys, "export", "--weights", str(spec_path("rlfn.yaml")), "--format", "ntire", "--team", "1", "--name",
        "R", "-o", str(tmp_path / "kit2"),
    )  # fmt: skip
    assert code == 2 and "import_paths" in err and not list((tmp_path / "kit2").glob("team01_R.*"))


def write_spec(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load(spec_path("spanv2.yaml").read_text())
    folder = SPECS.resolve()
    data["code"], data["weights"] = str(folder / data["code"]), str(folder / data["weights"])
    data.update(changes)
    data = {k: v for k, v in data.items() if v is not None}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"code": "/no/such/model.py"}, "code file not found: /no/such/model.py"),
        ({"weights": "/no/such/w.pth"}, "weights file not found"),
        ({"class": "SPANV3"}, "no nn.Module class 'SPANV3' (found: "),
        ({"args": {"feature_channels": 32, "colour": 1}}, "unexpected keyword argument 'colour'"),
        ({"scale": 2}, "not x2"),
        ({"key": "params_ema"}, "no entry 'params_ema'"),
        ({"args": {"num_in_ch": 3, "num_out_ch": 3, "feature_channels": 48, "use_span_attn": False}}, "does not fit"),
        ({"args": {"num_in_ch": 3}}, "missing 1 required positional argument: 'num_out_ch'"),
        ({"scale": None}, "the model spec needs 'scale'"),
        ({"pad_to": "8"}, "'pad_to' has the wrong type"),
        ({"colour": 1}, "unknown key 'colour'"),
    ],
)
def test_bad_spec_files_end_in_one_line(tmp_path: Path, capsys, changes: dict, message: str) -> None:
    path = write_spec(tmp_path, **changes)
    code, _, err = run_cli(capsys, "eval", "--weights", str(path), "--data", str(benchmark_set("Set5")))
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_a_file_needing_its_import_path_says_so(tmp_path: Path, capsys) -> None:
    data = yaml.safe_load(spec_path("rlfn.yaml").read_text())
    folder = SPECS.resolve()
    data = {**data, "code": str(folder / data["code"]), "weights": str(folder / data["weights"])}
    del data["import_paths"]
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(data))
    code, _, err = run_cli(capsys, "profile", "--weights", str(tmp_path / "r.yaml"), "--runs", "1")
    assert code == 2 and "import failed" in err and "import_paths" in err


# ------------------------------------------------------------------ spec files made here (no ../shared needed)
TINY_NETWORK = """
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, scale=2):
        super().__init__()
        self.conv = nn.Conv2d(3, 3 * scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x):
        return self.shuffle(self.conv(x))
"""


def tiny_spec(tmp_path: Path, code: str = TINY_NETWORK, name: str = "spec.yaml", **changes) -> Path:
    """A spec file for a one-conv x2 network (bias zero, so linear) whose Python file is ``code``."""
    (tmp_path / "tiny.py").write_text(code)
    torch.manual_seed(0)
    torch.save({"conv.weight": torch.randn(12, 3, 3, 3) * 0.1, "conv.bias": torch.zeros(12)}, tmp_path / "tiny.pth")
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"code": "tiny.py", "class": "Tiny", "weights": "tiny.pth", "scale": 2} | changes))
    return path


def test_a_tiny_spec_file_loads_with_either_input_range(tmp_path: Path) -> None:
    x = torch.rand(1, 3, 9, 7)
    plain = load(str(tiny_spec(tmp_path))).runnable()
    scaled = load(str(tiny_spec(tmp_path, name="scaled.yaml", input_range=255))).runnable()
    with torch.no_grad():  # a linear network: f(255 x) / 255 = f(x)
        assert torch.allclose(plain(x), scaled(x), atol=1e-5)


@pytest.mark.parametrize(
    ("code", "changes", "message"),
    [
        ("import sys\nsys.exit(0)\n" + TINY_NETWORK, {}, "the model file exited at import (sys.exit(0))"),
        (TINY_NETWORK.replace("super().__init__()", "raise SystemExit(3)"), {}, "building Tiny exited"),
        (TINY_NETWORK.replace("return self", "raise SystemExit\n        return self"), {}, "test forward exited"),
        (TINY_NETWORK, {"input_range": 7}, "input_range must be 1 (the network takes RGB in [0, 1]) or 255"),
        (TINY_NETWORK, {"input_range": 0.5}, "input_range must be 1"),
        (TINY_NETWORK, {"weights": "."}, "weights names a folder, not a file"),
        (TINY_NETWORK, {"args": {1: 2}}, "'args' must be keyword arguments"),
    ],
)
def test_hostile_spec_files_end_in_one_line(tmp_path: Path, capsys, code: str, changes: dict, message: str) -> None:
    spec = tiny_spec(tmp_path, code, **changes)
    image, out = tmp_path / "tiny.png", tmp_path / "out"
    Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(image)
    status, _, err = run_cli(capsys, "upscale", str(image), "-o", str(out), "--weights", str(spec))
    assert status == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not out.exists() or not any(out.iterdir())


def test_an_interrupt_at_import_still_interrupts(tmp_path: Path) -> None:
    spec = tiny_spec(tmp_path, "raise KeyboardInterrupt\n" + TINY_NETWORK)
    with pytest.raises(KeyboardInterrupt):
        load(str(spec))
