"""The ``dsclora`` CLI end to end on real images, and its handling of broken and odd inputs."""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import benchmark_set, official_weight
from dsclora.checkpoints import load_model
from dsclora.cli import main
from dsclora.data.imresize import imresize
from dsclora.inference import forward_shapes, tile_windows, tiled_forward

REPO = Path(__file__).resolve().parents[1]


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def photo_png(tmp_path: Path, sample_photo: np.ndarray) -> Path:
    path = tmp_path / "in" / "astronaut.png"
    path.parent.mkdir()
    Image.fromarray(sample_photo[100:164, 180:260]).save(path)  # a 80x64 crop keeps the test fast
    return path


def model_output(weights: Path, rgb_uint8: np.ndarray) -> np.ndarray:
    model, _ = load_model(weights)
    x = torch.from_numpy(rgb_uint8.transpose(2, 0, 1).astype(np.float32) / 255)[None]
    with torch.no_grad():
        sr = model(x)[0].clamp(0, 1).permute(1, 2, 0).numpy()
    return np.floor(sr * 255 + 0.5).astype(np.uint8)


def test_upscale_real_photo_equals_model_output(capsys, tmp_path: Path, photo_png: Path) -> None:
    weights = official_weight("dscf")
    code, _, err = run_cli(capsys, "upscale", str(photo_png), "-o", str(tmp_path / "out"), "--weights", "dscf")
    assert code == 0, err
    result = np.asarray(Image.open(tmp_path / "out" / "astronaut.png"))
    expected = model_output(weights, np.asarray(Image.open(photo_png)))
    assert result.shape == (256, 320, 3)
    assert np.abs(result.astype(int) - expected.astype(int)).max() <= 1


def test_upscale_folder_and_glob(capsys, tmp_path: Path, photo_png: Path) -> None:
    official_weight("dscf")
    Image.open(photo_png).crop((0, 0, 20, 16)).save(photo_png.parent / "small.jpg")
    code, _, err = run_cli(capsys, "upscale", str(photo_png.parent), "-o", str(tmp_path / "a"), "--weights", "dscf")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["astronaut.png", "small.png"]
    pattern = str(photo_png.parent / "*.jpg")
    code, _, err = run_cli(capsys, "upscale", pattern, "-o", str(tmp_path / "b"), "--weights", "dscf", "--ext", "webp")
    assert code == 0, err
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["small.webp"]


def test_tiled_equals_untiled() -> None:
    model, spec = load_model(official_weight("dscf"))
    lr = np.asarray(Image.open(next((benchmark_set("Set5") / "x4" / "LR").glob("*.png"))).convert("RGB"))
    x = torch.from_numpy(lr.transpose(2, 0, 1).astype(np.float32) / 255)[None]
    whole = tiled_forward(model, x, 4)
    tiled = tiled_forward(model, x, 4, tile=24, overlap=spec.span.receptive_radius)
    assert (whole - tiled).abs().max().item() <= 1e-4
    too_little = tiled_forward(model, x, 4, tile=24, overlap=2)
    assert (whole - too_little).abs().max().item() > 1e-3  # the overlap really matters


def test_tile_windows_keep_one_shape_and_enough_context() -> None:
    # worked by hand: size 10, tile 4, overlap 2 -> windows of 8 starting at 0, 2, 2
    assert tile_windows(10, 4, 2) == [(0, 4, 0), (4, 8, 2), (8, 10, 2)]
    for size in range(1, 60):
        for tile, overlap in ((7, 3), (16, 0), (5, 21)):
            span = min(tile + 2 * overlap, size)
            cores = tile_windows(size, tile, overlap)
            assert [c[0] for c in cores] == list(range(0, size, tile)) and cores[-1][1] == size
            for start, end, window in cores:
                assert window >= 0 and window + span <= size
                assert start - window >= overlap or window == 0
                assert window + span - end >= overlap or window + span == size


def test_forward_shapes_counts_windows() -> None:
    # 100x50 in tiles of 32 with 4 of overlap: 4 x 2 windows of 40x40; 30x30 fits in one tile, runs whole
    assert forward_shapes([(100, 50), (30, 30), (100, 50)], 32, 4) == {(40, 40): 16, (30, 30): 1}
    assert forward_shapes([(100, 50)], 0, 4) == {(100, 50): 1}


def test_upscale_cli_tiling_matches(capsys, tmp_path: Path, photo_png: Path) -> None:
    official_weight("dscf")
    for name, extra in (("whole", []), ("tiled", ["--tile", "32"])):
        code, _, err = run_cli(
            capsys, "upscale", str(photo_png), "-o", str(tmp_path / name), "--weights", "dscf", *extra
        )
        assert code == 0, err
    a = np.asarray(Image.open(tmp_path / "whole" / "astronaut.png")).astype(int)
    b = np.asarray(Image.open(tmp_path / "tiled" / "astronaut.png")).astype(int)
    assert np.abs(a - b).max() <= 1


# ---------------------------------------------------------------------------------------- odd valid inputs


def upscale_one(capsys, tmp_path: Path, src: Path, ext: str = "png") -> Image.Image:
    official_weight("dscf")
    out = tmp_path / "odd_out"
    code, _, err = run_cli(capsys, "upscale", str(src), "-o", str(out), "--weights", "dscf", "--ext", ext)
    assert code == 0, err
    return Image.open(out / f"{src.stem}.{ext}")


def test_one_pixel_image(capsys, tmp_path: Path) -> None:
    src = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (120, 60, 200)).save(src)
    out = upscale_one(capsys, tmp_path, src)
    assert out.size == (4, 4) and out.mode == "RGB"


def test_grayscale_gives_grayscale(capsys, tmp_path: Path, sample_photo: np.ndarray) -> None:
    src = tmp_path / "gray.png"
    Image.fromarray(sample_photo[:40, :48]).convert("L").save(src)
    out = upscale_one(capsys, tmp_path, src)
    assert out.mode == "L" and out.size == (192, 160)
    rgb_path = tmp_path / "gray_rgb.png"
    Image.open(src).convert("RGB").save(rgb_path)
    colour = np.asarray(upscale_one(capsys, tmp_path, rgb_path)).astype(float).mean(axis=2)
    assert np.abs(np.asarray(out).astype(float) - colour).max() <= 1.0  # same pixels, averaged channels


def test_sixteen_bit_grayscale_keeps_depth(capsys, tmp_path: Path) -> None:
    src = tmp_path / "deep.png"
    ramp = (np.linspace(0, 65535, 30 * 20).reshape(20, 30)).astype(np.uint16)
    Image.fromarray(ramp).save(src)
    out = upscale_one(capsys, tmp_path, src)
    arr = np.asarray(out)
    assert out.size == (120, 80) and arr.dtype == np.uint16
    assert len(np.unique(arr)) > 256  # more levels than 8 bits could hold


def test_rgba_keeps_alpha(capsys, tmp_path: Path, sample_photo: np.ndarray) -> None:
    src = tmp_path / "rgba.png"
    rgba = np.dstack([sample_photo[:32, :32], np.tile(np.linspace(0, 255, 32).astype(np.uint8), (32, 1))])
    Image.fromarray(rgba, "RGBA").save(src)
    out = upscale_one(capsys, tmp_path, src)
    assert out.mode == "RGBA" and out.size == (128, 128)
    alpha = np.asarray(out)[..., 3].astype(float)
    expected = np.clip(imresize(rgba[..., 3].astype(float) / 255, 4.0), 0, 1) * 255
    assert np.abs(alpha - expected).max() <= 1.0
    assert alpha[:, 0].mean() < 20 and alpha[:, -1].mean() > 235  # the ramp survives left-to-right


def test_palette_and_jpeg(capsys, tmp_path: Path, sample_photo: np.ndarray) -> None:
    pal = tmp_path / "pal.png"
    Image.fromarray(sample_photo[:24, :24]).convert("P", palette=Image.Palette.ADAPTIVE).save(pal)
    out = upscale_one(capsys, tmp_path, pal)
    assert out.mode == "RGB" and out.size == (96, 96)
    jpg = tmp_path / "photo.jpg"
    Image.fromarray(sample_photo[:24, :32]).save(jpg, quality=90)
    out = upscale_one(capsys, tmp_path, jpg, ext="jpg")
    assert out.format == "JPEG" and out.size == (128, 96)


# ---------------------------------------------------------------------------------------- broken inputs


def _png_bomb(width: int, height: int) -> bytes:
    """A well-formed PNG whose header claims a huge size over a few bytes of data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b"")


def broken_image(kind: str, folder: Path, photo: np.ndarray) -> Path:
    path = folder / f"{kind}.png"
    if kind == "zero_byte":
        path.write_bytes(b"")
    elif kind == "truncated":
        Image.fromarray(photo[:64, :64]).save(path)
        path.write_bytes(path.read_bytes()[:400])
    elif kind == "not_an_image":
        path.write_text("hello, I am text\n")
    elif kind == "bomb":
        path.write_bytes(_png_bomb(100_000, 100_000))
    elif kind == "missing":
        pass
    return path


@pytest.mark.parametrize("kind", ["zero_byte", "truncated", "not_an_image", "bomb", "missing"])
def test_broken_images_fail_cleanly(capsys, tmp_path: Path, sample_photo: np.ndarray, kind: str) -> None:
    official_weight("dscf")
    src = broken_image(kind, tmp_path, sample_photo)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "upscale", str(src), "-o", str(out), "--weights", "dscf")
    assert code != 0
    lines = [line for line in err.splitlines() if line.startswith("dsclora: error")]
    assert len(lines) == 1 and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def broken_checkpoint(kind: str, folder: Path) -> Path:
    path = folder / f"{kind}.pth"
    if kind == "unknown":
        torch.save({"body.0.weight": torch.zeros(4, 3, 3, 3), "tail.weight": torch.zeros(3, 4, 1, 1)}, path)
    elif kind == "corrupt":
        torch.save({"conv_1.eval_conv.weight": torch.zeros(26, 3, 3, 3)}, path)
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "pickle_code":
        with open(path, "wb") as handle:
            pickle.dump({"state": _RunsCode(str(folder / "PWNED"))}, handle)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "safetensors_garbage":
        path = folder / "garbage.safetensors"
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    return path


@pytest.mark.parametrize("kind", ["unknown", "corrupt", "pickle_code", "empty", "safetensors_garbage"])
@pytest.mark.parametrize("command", ["upscale", "convert", "profile"])
def test_bad_checkpoints_fail_cleanly(capsys, tmp_path: Path, photo_png: Path, kind: str, command: str) -> None:
    ckpt = broken_checkpoint(kind, tmp_path)
    out = tmp_path / "out"
    argv = {
        "upscale": ["upscale", str(photo_png), "-o", str(out), "--weights", str(ckpt)],
        "convert": ["convert", str(ckpt), str(out / "x.safetensors")],
        "profile": ["profile", "--weights", str(ckpt), "--json", str(out / "p.json")],
    }[command]
    code, _, err = run_cli(capsys, *argv)
    assert code != 0
    assert len(err.strip().splitlines()) == 1 and err.startswith("dsclora: error")
    assert not out.exists()
    assert not (tmp_path / "PWNED").exists()  # the pickle's code never ran


def test_entry_point_subprocess_one_line_error(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "dsclora.cli", "upscale", str(tmp_path / "nope.png"), "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"dsclora: error: no such file: {tmp_path / 'nope.png'}"


def test_help_explains_every_option() -> None:
    parser_help = subprocess.run(
        [sys.executable, "-m", "dsclora.cli", "upscale", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        check=True,
    ).stdout
    for option in ("--weights", "--tile", "--tile-overlap", "--device", "--precision", "--ext", "--max-pixels"):
        assert option in parser_help


# ---------------------------------------------------------------------------------------- eval / profile / convert


def test_eval_bicubic_json(capsys, tmp_path: Path) -> None:
    report = tmp_path / "eval.json"
    code, out, err = run_cli(
        capsys,
        "eval",
        "--weights",
        "bicubic",
        "--data",
        str(benchmark_set("Set5")),
        "--scale",
        "4",
        "--json",
        str(report),
    )
    assert code == 0, err
    data = json.loads(report.read_text())
    set5 = data["datasets"][0]
    assert set5["images"] == 5 and len(set5["per_image"]) == 5
    assert abs(set5["psnr_y"] - 28.42) <= 0.02 and abs(set5["ssim_y"] - 0.8104) <= 0.002
    assert "Set5" in out and f"{set5['psnr_y']:.3f}" in out
    assert {"psnr_y", "ssim_y", "psnr_rgb", "name"} <= set(set5["per_image"][0])


def test_eval_hr_only_folder_makes_and_caches_lr(capsys, tmp_path: Path) -> None:
    """An HR-only folder (like a user's Urban100 copy) gets MATLAB-bicubic LR: same result as official LR."""
    official_weight("dscf")
    hr_only = tmp_path / "MySet" / "HR"
    hr_only.mkdir(parents=True)
    for src in sorted((benchmark_set("Set5") / "x4" / "HR").glob("*.png"))[:2]:
        (hr_only / src.name).write_bytes(src.read_bytes())
    code, _out, err = run_cli(
        capsys, "eval", "--weights", "dscf", "--data", str(hr_only.parent), "--json", str(tmp_path / "a.json")
    )
    assert code == 0, err
    cache = list((Path(os.environ["XDG_CACHE_HOME"]) / "dsclora" / "lr").glob("*.png"))
    assert len(cache) >= 2
    ours = json.loads((tmp_path / "a.json").read_text())["datasets"][0]["psnr_y"]
    official_lr = tmp_path / "Ref"
    (official_lr / "x4").mkdir(parents=True)
    for sub in ("HR", "LR"):
        (official_lr / "x4" / sub).mkdir()
        for src in sorted((benchmark_set("Set5") / "x4" / sub).glob("*.png"))[:2]:
            (official_lr / "x4" / sub / src.name).write_bytes(src.read_bytes())
    code, _, err = run_cli(
        capsys, "eval", "--weights", "dscf", "--data", str(official_lr), "--json", str(tmp_path / "b.json")
    )
    reference = json.loads((tmp_path / "b.json").read_text())["datasets"][0]["psnr_y"]
    assert abs(ours - reference) < 0.02


def test_profile_dscf_ntire_figures(capsys, tmp_path: Path) -> None:
    official_weight("dscf")
    report = tmp_path / "p.json"
    code, _out, err = run_cli(capsys, "profile", "--weights", "dscf", "--runs", "2", "--json", str(report))
    assert code == 0, err
    figures = json.loads(report.read_text())
    assert figures["params"] == 130_828 and figures["convs"] == 22
    assert round(figures["flops_macs"] / 1e9, 2) == 8.54 and round(figures["activations"] / 1e6, 2) == 38.93
    assert figures["latency_ms_median"] > 0 and figures["threads"] >= 1 and figures["peak_memory_bytes"] > 0


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_convert_round_trip_is_exact(capsys, tmp_path: Path, fmt: str) -> None:
    src = official_weight("dscf")
    train_file = tmp_path / f"train.{fmt}"
    back_file = tmp_path / f"deploy.{fmt}"
    assert run_cli(capsys, "convert", str(src), str(train_file), "--to", "train")[0] == 0
    _trained, spec = load_model(train_file)
    assert spec.form == "train" and spec.span.channels == 26
    assert run_cli(capsys, "convert", str(train_file), str(back_file), "--to", "deploy")[0] == 0
    original, _ = load_model(src)
    restored, _ = load_model(back_file)
    for key, value in original.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key  # bit-exact collapse of the expansion
    raw = torch.load(train_file, weights_only=True) if fmt == "pth" else None
    if raw is not None:
        assert {"conv_1.sk.weight", "block_1.c1_r.conv.0.weight", "block_1.c1_r.eval_conv.weight"} <= set(raw)


def test_upscale_auto_weighs_the_job_and_says_why(capsys, monkeypatch, tmp_path: Path, photo_png: Path) -> None:
    from dsclora import autotune

    official_weight("dscf")
    seen = []
    real_choose = autotune.choose

    def spy(model, device, shapes=None):
        seen.append(dict(shapes or {}))
        return real_choose(model, device, shapes)

    monkeypatch.setattr(autotune, "choose", spy)
    code, _, err = run_cli(capsys, "upscale", str(photo_png), "-o", str(tmp_path / "a"), "--weights", "dscf")
    assert code == 0, err
    assert "(auto: fastest eager fp32 path measured on this machine)" in err
    # 80x64 image, tiles of 32 with DSCF's 21-pixel overlap: 2 x 3 windows of 64x74 (clipped to the height)
    code, _, err = run_cli(
        capsys, "upscale", str(photo_png), "-o", str(tmp_path / "b"), "--weights", "dscf", "--tile", "32"
    )
    assert code == 0, err
    assert seen == [{(64, 80): 1}, {(64, 74): 6}]
