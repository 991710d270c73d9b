"""The ``dsclora`` CLI end to end on real images, and its handling of broken and odd inputs."""

from __future__ import annotations

import errno
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

from dsclora.cli import build_parser, main
from dsclora.data.images import to_tensor
from dsclora.data.imresize import imresize
from dsclora.fs import atomic_write, sha256_file
from dsclora.runtime.reference import MAX_ABS_CHANGE
from dsclora.weights.load import load
from dsclora.weights.registry import embedded_weights
from support import REPO, benchmark_set, make_benchmark


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
    model = load(str(weights)).module
    x = torch.from_numpy(rgb_uint8.transpose(2, 0, 1).astype(np.float32) / 255)[None]
    with torch.no_grad():
        sr = model(x)[0].clamp(0, 1).permute(1, 2, 0).numpy()
    return np.floor(sr * 255 + 0.5).astype(np.uint8)


def test_upscale_real_photo_equals_model_output(capsys, tmp_path: Path, photo_png: Path) -> None:
    expected = model_output(embedded_weights(), np.asarray(Image.open(photo_png))).astype(int)
    argv = ["upscale", str(photo_png), "--weights", "default"]
    code, _, err = run_cli(capsys, *argv, "-o", str(tmp_path / "out"), "--precision", "fp32")
    assert code == 0, err
    assert "upscale:" not in err and "img/s" not in err  # no progress bar drawn into a non-terminal
    result = np.asarray(Image.open(tmp_path / "out" / "astronaut.png"))
    assert result.shape == (256, 320, 3)
    assert np.abs(result.astype(int) - expected).max() <= 1
    # the default (--precision auto) is fp32 or a precision within auto's reference bound of it
    code, _, err = run_cli(capsys, *argv, "-o", str(tmp_path / "auto"))
    assert code == 0 and "precision auto:" in err, err
    result = np.asarray(Image.open(tmp_path / "auto" / "astronaut.png")).astype(int)
    assert np.abs(result - expected).max() <= round(MAX_ABS_CHANGE * 255) + 1


def test_upscale_folder_and_glob(capsys, tmp_path: Path, photo_png: Path) -> None:
    Image.open(photo_png).crop((0, 0, 20, 16)).save(photo_png.parent / "small.jpg")
    code, _, err = run_cli(capsys, "upscale", str(photo_png.parent), "-o", str(tmp_path / "a"))
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["astronaut.png", "small.png"]
    pattern = str(photo_png.parent / "*.jpg")
    code, _, err = run_cli(capsys, "upscale", pattern, "-o", str(tmp_path / "b"), "--ext", "webp")
    assert code == 0, err
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["small.webp"]


def test_upscale_cli_tiling_matches(capsys, tmp_path: Path, photo_png: Path) -> None:
    for name, extra in (("whole", ["--tile", "0"]), ("tiled", ["--tile", "32"])):
        argv = ["upscale", str(photo_png), "-o", str(tmp_path / name), "--precision", "fp32", *extra]
        code, _, err = run_cli(capsys, *argv)
        assert code == 0, err
    a = np.asarray(Image.open(tmp_path / "whole" / "astronaut.png")).astype(int)
    b = np.asarray(Image.open(tmp_path / "tiled" / "astronaut.png")).astype(int)
    assert np.abs(a - b).max() <= 1


# ---------------------------------------------------------------------------------------- odd valid inputs


def upscale_one(capsys, tmp_path: Path, src: Path, ext: str = "png") -> Image.Image:
    out = tmp_path / "odd_out"
    code, _, err = run_cli(capsys, "upscale", str(src), "-o", str(out), "--ext", ext, "--overwrite")
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
    elif kind == "symlink_loop":
        path.symlink_to(path.with_name("other.png"))
        path.with_name("other.png").symlink_to(path)
    elif kind == "missing":
        pass
    return path


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a command loads a model: what it refuses must be refused before any work."""
    import dsclora.weights.load as loader

    def no_loading(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(loader, "load", no_loading)


BROKEN = {
    "zero_byte": "empty file",
    "truncated": "truncated or corrupt",
    "not_an_image": "not an image",
    "bomb": "image too large",
    "symlink_loop": "is a symlink loop",
    "missing": "no such file",
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_broken_images_fail_cleanly(capsys, tmp_path: Path, photo_png: Path, no_model, kind: str) -> None:
    """Alone or in a folder with a good image: one line naming the file, exit 2, before the model loads, and
    nothing written (every input is decoded once first, so a truncated body is found before any work)."""
    src = broken_image(kind, photo_png.parent, np.asarray(Image.open(photo_png)))
    for target in (src, photo_png.parent):
        if kind in ("missing", "symlink_loop") and target != src:
            continue  # not in a folder listing
        out = tmp_path / "out"
        code, _, err = run_cli(capsys, "upscale", str(target), "-o", str(out))
        assert code == 2 and err.count("\n") == 1 and err.startswith("dsclora: error") and BROKEN[kind] in err, err
        assert src.name in err
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
    elif kind == "text":
        path.write_text("these are not weights, just a note\n" * 3)
    elif kind == "random_bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8).tobytes())
    elif kind == "tensor_not_dict":
        torch.save(torch.zeros(3), path)
    elif kind == "wrong_shapes":
        torch.save({"conv_1.eval_conv.weight": torch.zeros(5), "conv_cat.weight": torch.zeros(2),
                    "upsampler.0.weight": torch.zeros(48, 26, 3, 3)}, path)  # fmt: skip
    return path


BAD_CHECKPOINTS = ["unknown", "corrupt", "pickle_code", "empty", "safetensors_garbage", "text", "random_bytes"]
BAD_CHECKPOINTS += ["tensor_not_dict", "wrong_shapes"]


@pytest.mark.parametrize("kind", BAD_CHECKPOINTS)
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
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("dsclora: error") and "internal" not in err
    assert ckpt.name in err  # names the file
    assert not out.exists() or not any(out.iterdir())
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


def _subparsers(parser) -> dict:
    found = {}
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                found[name] = sub
                found.update({f"{name} {k}": v for k, v in _subparsers(sub).items()})
    return found


def test_help_explains_every_option() -> None:
    commands = _subparsers(build_parser())
    assert {"upscale", "eval", "profile", "convert", "train", "merge", "demo", "export", "weights list"} <= set(
        commands
    )
    for name, sub in commands.items():
        assert sub.description, f"{name} has no description"
        for action in sub._actions:
            assert action.help and action.help.strip(), f"{name} {action.option_strings or action.dest}: no help"
    writers = ("upscale", "eval", "profile", "convert", "merge", "export", "train")
    for name in writers:  # every command that writes files has the one policy's --overwrite
        assert any("--overwrite" in a.option_strings for a in commands[name]._actions), name


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
    """An HR-only folder (like a user's Urban100 copy) gets MATLAB-bicubic LR, cached: the same figures as the
    set with its LR files (made by MATLAB bicubic, as the official sets were)."""
    with_lr = make_benchmark(tmp_path / "Ref", count=2)
    hr_only = tmp_path / "MySet" / "HR"
    hr_only.mkdir(parents=True)
    for src in sorted((with_lr / "x4" / "HR").glob("*.png")):
        (hr_only / src.name).write_bytes(src.read_bytes())
    code, _out, err = run_cli(capsys, "eval", "--data", str(hr_only.parent), "--json", str(tmp_path / "a.json"))
    assert code == 0, err
    cache = sorted((Path(os.environ["XDG_CACHE_HOME"]) / "dsclora" / "lr").glob("*.png"))
    made = [np.asarray(Image.open(f)) for f in cache]
    for lr_file in sorted((with_lr / "x4" / "LR").glob("*.png")):  # each LR it made is in the cache
        assert any(np.array_equal(np.asarray(Image.open(lr_file)), m) for m in made)
    ours = json.loads((tmp_path / "a.json").read_text())["datasets"][0]
    code, _, err = run_cli(capsys, "eval", "--data", str(with_lr), "--json", str(tmp_path / "b.json"))
    assert code == 0, err
    reference = json.loads((tmp_path / "b.json").read_text())["datasets"][0]
    assert ours["images"] == reference["images"] == 2
    assert (ours["psnr_y"], ours["ssim_y"]) == (reference["psnr_y"], reference["ssim_y"])


def test_profile_reproduces_the_published_figures_of_span_tiny(capsys, tmp_path: Path) -> None:
    """The embedded model has the DSCLoRA release's architecture (SPAN-tiny), so the same published counts."""
    report = tmp_path / "p.json"
    code, _out, err = run_cli(capsys, "profile", "--runs", "2", "--json", str(report))
    assert code == 0, err
    figures = json.loads(report.read_text())
    # the NTIRE 2025 report's figures for the DSCLoRA release (docs/method.md §3)
    assert figures["params"] == 130_828 and figures["convs"] == 22
    assert round(figures["flops_macs"] / 1e9, 2) == 8.54 and round(figures["activations"] / 1e6, 2) == 38.93
    assert figures["runs"] == 2 and figures["latency_ms_min"] <= figures["latency_ms_median"]


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_convert_round_trip_is_exact(capsys, tmp_path: Path, fmt: str) -> None:
    src = embedded_weights()
    train_file = tmp_path / f"train.{fmt}"
    back_file = tmp_path / f"deploy.{fmt}"
    assert run_cli(capsys, "convert", str(src), str(train_file), "--to", "train")[0] == 0
    trained = load(str(train_file), merged=False).module
    assert not trained.deploy and trained.config.channels == 26
    assert run_cli(capsys, "convert", str(train_file), str(back_file), "--to", "deploy")[0] == 0
    original = load(str(src)).module
    restored = load(str(back_file)).module
    for key, value in original.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key  # bit-exact collapse of the expansion
    raw = torch.load(train_file, weights_only=True) if fmt == "pth" else None
    if raw is not None:
        assert {"conv_1.sk.weight", "block_1.c1_r.conv.0.weight", "block_1.c1_r.eval_conv.weight"} <= set(raw)


def test_upscale_auto_weighs_the_job_and_says_why(capsys, monkeypatch, tmp_path: Path, photo_png: Path) -> None:
    from dsclora.runtime import autotune

    seen = []
    real_choose = autotune.choose

    def spy(timings, shapes=None, eager=None):
        seen.append(dict(shapes or {}))
        return real_choose(timings, shapes, eager)

    monkeypatch.setattr(autotune, "choose", spy)
    code, _, err = run_cli(capsys, "upscale", str(photo_png), "-o", str(tmp_path / "a"))
    assert code == 0, err
    assert "(backend auto, precision auto: " in err and "back-end: fastest eager path measured on this machine)" in err
    # 80x64 image, tiles of 32 with the model's 21-pixel overlap: 2 x 3 windows of 64x74 (clipped to the height)
    code, _, err = run_cli(capsys, "upscale", str(photo_png), "-o", str(tmp_path / "b"), "--tile", "32")
    assert code == 0, err
    assert seen == [{(64, 80): 1}, {(64, 74): 6}]


# ---------------------------------------------------------------------------------------- a new user's session


def test_upscale_never_writes_over_its_inputs(capsys, tmp_path: Path, photo_png: Path) -> None:
    folder = photo_png.parent
    original = photo_png.read_bytes()
    code, _, err = run_cli(capsys, "upscale", str(folder), "-o", str(folder))
    assert code == 2 and "would overwrite one of upscale's inputs" in err and "--suffix" in err
    code, _, err = run_cli(capsys, "upscale", str(folder), "-o", str(folder), "--overwrite")
    assert code == 2 and photo_png.read_bytes() == original  # not even --overwrite replaces an input
    code, _, err = run_cli(capsys, "upscale", str(folder), "-o", str(folder), "--suffix", "_x4")
    assert code == 0, err
    assert photo_png.read_bytes() == original and Image.open(folder / "astronaut_x4.png").size == (320, 256)


def test_existing_outputs_need_a_choice(capsys, tmp_path: Path, photo_png: Path) -> None:
    out = tmp_path / "out"
    assert run_cli(capsys, "upscale", str(photo_png), "-o", str(out))[0] == 0
    (out / "astronaut.png").write_bytes(b"mine")
    code, _, err = run_cli(capsys, "upscale", str(photo_png), "-o", str(out))
    assert code == 2 and "exists" in err and "--overwrite" in err and "--skip-existing" in err
    assert (out / "astronaut.png").read_bytes() == b"mine"
    code, _, err = run_cli(capsys, "upscale", str(photo_png), "-o", str(out), "--skip-existing")
    assert code == 0 and "skipped (exists)" in err and (out / "astronaut.png").read_bytes() == b"mine"
    assert run_cli(capsys, "upscale", str(photo_png), "-o", str(out), "--overwrite")[0] == 0
    assert Image.open(out / "astronaut.png").size == (320, 256)


def test_recursive_mirrors_the_tree_and_plain_runs_say_what_they_left(capsys, tmp_path: Path, photo_png: Path) -> None:
    deeper = photo_png.parent / "sub" / "deeper"
    deeper.mkdir(parents=True)
    Image.open(photo_png).crop((0, 0, 16, 16)).save(deeper / "tiny.png")
    code, _, err = run_cli(capsys, "upscale", str(photo_png.parent), "-o", str(tmp_path / "flat"))
    assert code == 0 and "1 image(s) in sub-folders not taken (add --recursive)" in err
    code, _, err = run_cli(capsys, "upscale", str(photo_png.parent), "-o", str(tmp_path / "tree"), "--recursive")
    assert code == 0, err
    assert Image.open(tmp_path / "tree" / "sub" / "deeper" / "tiny.png").size == (64, 64)


def test_sixteen_bit_colour_keeps_depth(capsys, tmp_path: Path) -> None:
    png = pytest.importorskip("png", reason="pypng (the [png16] extra) reads and writes 16-bit colour PNGs")
    src = tmp_path / "deep_rgb.png"
    yy, xx = np.mgrid[0:20, 0:30]
    ramp = np.stack([yy * 3000, xx * 2000, (yy + xx) * 1300], axis=2).astype(np.uint16)
    png.from_array(ramp.reshape(20, -1), "RGB;16").save(str(src))
    upscale_one(capsys, tmp_path, src)
    width, height, rows, info = png.Reader(filename=str(tmp_path / "odd_out" / "deep_rgb.png")).asDirect()
    data = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows])
    assert (width, height, info["bitdepth"], info["planes"]) == (120, 80, 16, 3)
    assert len(np.unique(data)) > 256  # more levels than 8 bits could hold


def test_bad_outputs_are_refused_before_any_work(capsys, tmp_path: Path, photo_png: Path, monkeypatch) -> None:
    import dsclora.weights.load as loader

    def no_loading(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(loader, "load", no_loading)
    (tmp_path / "w.safetensors").write_bytes(embedded_weights().read_bytes())
    (tmp_path / "w.json").write_text("{}")  # the weights' own card: an input of the export's card
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("x")
    unwritable = Path("/proc/dsclora-test")  # a mount nobody can create files in, root included
    cases = [
        (["upscale", str(photo_png), "-o", str(a_file)], "is a file"),
        (["upscale", str(photo_png), "-o", str(a_file / "sub")], "is a file"),
        (["upscale", str(photo_png), "-o", str(unwritable)], "cannot write"),
        (["export", "--format", "onnx", "-o", str(unwritable / "m.onnx")], "cannot write"),
        (["export", "--format", "onnx", "-o", str(tmp_path)], "is a folder"),
        (["eval", "--data", str(tmp_path), "--json", str(unwritable / "e.json")], "cannot write"),
        (["profile", "--json", str(a_file / "p.json")], "is a file"),
        (["convert", str(embedded_weights()), str(tmp_path / "x.onnx")], "export --format onnx"),
        (["export", "--weights", str(tmp_path / "w.safetensors"), "--format", "safetensors", "-o",
          str(tmp_path / "w.safetensors")], "one of export's inputs"),
        (["export", "--weights", str(tmp_path / "w.safetensors"), "--format", "onnx", "-o", str(tmp_path / "w.onnx")],
         "one of export's inputs"),
        (["eval", "--weights", str(tmp_path / "w.safetensors"), "--data", str(tmp_path), "--json",
          str(tmp_path / "w.json")], "one of eval's inputs"),
        (["profile", "--weights", str(tmp_path / "w.safetensors"), "--json", str(tmp_path / "w.json")],
         "one of profile's inputs"),
        (["convert", str(embedded_weights()), str(tmp_path / "x.ckpt")], "unknown model file suffix"),
        (["convert", str(embedded_weights()), str(tmp_path / "x.pth"), "--format", "safetensors"], "suffix says pth"),
        (["upscale", str(photo_png), "-o", str(tmp_path / "o"), "--tile", "-5"], "--tile: must be >= 0"),
        (["upscale", str(photo_png), "-o", str(tmp_path / "o"), "--precision", "fp16", "--device", "cpu"], "GPU"),
        (["upscale", str(photo_png), "-o", str(tmp_path / "o"), "--backend", "onnxruntime", "--precision", "bf16"],
         "fp32 only"),
        (["profile", "--size", "0x4"], "sizes must be positive"),
        (["eval", "--data", str(tmp_path / "nope"), "--weights", "bicubic"], "--data"),
    ]  # fmt: skip
    for argv, message in cases:
        code, _, err = run_cli(capsys, *argv)
        assert code == 2, (argv, err)
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not (tmp_path / "o").exists()


@pytest.fixture
def workspace(tmp_path: Path, photo_png: Path) -> dict[str, Path]:
    """Inputs a command reads: weights with their JSON card, a benchmark folder, a check image."""
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(embedded_weights().read_bytes())
    (tmp_path / "w.json").write_text('{"license": "MIT"}')
    data = make_benchmark(tmp_path / "Set", count=1, height=48, width=48)
    return {"weights": weights, "card": tmp_path / "w.json", "data": data, "photo": photo_png}


def test_no_command_writes_over_its_inputs_whatever_the_flags(capsys, tmp_path: Path, workspace, no_model) -> None:
    w, card, data, photo = (str(workspace[k]) for k in ("weights", "card", "data", "photo"))
    hr = workspace["data"] / "x4" / "HR" / "img0.png"
    link = tmp_path / "link.safetensors"
    link.symlink_to(w)
    hard = tmp_path / "hard.safetensors"
    os.link(w, hard)
    cases = [
        ["eval", "--weights", w, "--data", str(data), "--json", str(hr)],  # an image of --data
        ["eval", "--weights", w, "--data", str(data), "--json", card],  # the weights' card
        ["profile", "--weights", w, "--ntire", "--data", str(data), "--json", str(hr)],
        ["profile", "--weights", w, "--json", w],
        ["convert", w, w],
        ["convert", w, str(link)],  # another name for the input: a symlink
        ["convert", w, str(hard)],  # or a hard link
        ["export", "--weights", w, "--format", "safetensors", "-o", w],
        ["export", "--weights", w, "--format", "spandrel", "-o", str(tmp_path / "w.pth")],  # its card is w.json
        ["export", "--weights", w, "--format", "onnx", "-o", str(tmp_path / "c.onnx"), "--check-image", str(tmp_path / "c.json")],
    ]  # fmt: skip
    (tmp_path / "c.json").write_bytes(Path(photo).read_bytes())  # a check image that happens to end in .json
    before = {p: p.read_bytes() for p in [hr, Path(w), Path(card), tmp_path / "c.json"]}
    for argv in cases:
        code, _, err = run_cli(capsys, *argv, "--overwrite")
        assert code == 2 and "would overwrite one of" in err and err.count("\n") == 1, (argv, err)
    fifo = tmp_path / "fifo.json"  # like /dev/null: not a file to replace, even with --overwrite
    os.mkfifo(fifo)
    code, _, err = run_cli(capsys, "eval", "--weights", "bicubic", "--scale", "4", "--data", str(data), "--json",
                           str(fifo), "--overwrite")  # fmt: skip
    assert code == 2 and "is not a regular file" in err and fifo.is_fifo(), err
    assert all(p.read_bytes() == content for p, content in before.items())
    assert link.is_symlink() and os.readlink(link) == w


def test_an_existing_output_needs_overwrite(capsys, tmp_path: Path, workspace) -> None:
    w, data = str(workspace["weights"]), str(workspace["data"])
    out = {name: tmp_path / name for name in ("e.json", "p.json", "c.safetensors", "x.safetensors", "x.json")}
    commands = {
        "e.json": ["eval", "--weights", "bicubic", "--scale", "4", "--data", data, "--json", str(out["e.json"])],
        "p.json": ["profile", "--weights", w, "--runs", "1", "--warmup", "0", "--size", "16x16", "--backend", "torch",
                   "--json", str(out["p.json"])],
        "c.safetensors": ["convert", w, str(out["c.safetensors"])],
        "x.json": ["export", "--weights", w, "--format", "safetensors", "-o", str(out["x.safetensors"])],
    }  # fmt: skip
    for name, argv in commands.items():
        out[name].write_text("mine")  # for export: only its card exists
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and f"{out[name]} exists; add --overwrite" in err and err.count("\n") == 1, err
        assert out[name].read_text() == "mine"
        code, _, err = run_cli(capsys, *argv, "--overwrite")
        assert code == 0, err
        assert out[name].read_bytes() != b"mine"
    assert json.loads(out["e.json"].read_text())["datasets"][0]["images"] == 1
    assert json.loads(out["x.json"].read_text())["resources"][0]["sha256"] == sha256_file(out["x.safetensors"])
    assert torch.equal(load(str(out["c.safetensors"])).module.conv_cat.weight, load(str(w)).module.conv_cat.weight)


@pytest.mark.parametrize("suffix", ["/../../escaped", "_x4/..", "..", "a/b", "_x\0"])
def test_upscale_suffix_cannot_leave_the_output_folder(capsys, tmp_path: Path, photo_png: Path, suffix) -> None:
    out = tmp_path / "deep" / "out"
    code, _, err = run_cli(capsys, "upscale", str(photo_png), "-o", str(out), "--suffix", suffix, "--overwrite")
    assert code == 2 and "--suffix" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["astronaut.png"]


def test_a_symlink_loop_is_named_as_one(capsys, tmp_path: Path, photo_png: Path, no_model) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(loop)
    named = tmp_path / "m.safetensors"  # an output that is itself a link in a loop
    named.symlink_to(tmp_path / "m2.safetensors")
    (tmp_path / "m2.safetensors").symlink_to(named)
    cases = [
        ["upscale", str(photo_png), "-o", str(loop / "out")],
        ["upscale", str(loop), "-o", str(tmp_path / "out")],
        ["upscale", str(photo_png), "-o", str(tmp_path / "out"), "--weights", str(loop)],
        ["export", "--format", "onnx", "-o", str(loop / "m.onnx")],
        ["convert", str(embedded_weights()), str(loop / "m.safetensors")],
        ["convert", str(embedded_weights()), str(named)],
        ["train", str(loop)],
    ]
    for argv in cases:
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and "symlink loop" in err and err.count("\n") == 1, (argv, err)
    assert not (tmp_path / "out").exists()


def _disk_fills_up(monkeypatch, kind: str) -> None:
    """Make the writer of ``kind`` fail as it does on a full disk, after writing part of its file: safetensors
    and torch.save with their own exception types (the free space tells), Pillow and plain writes with ENOSPC."""
    import pathlib

    import safetensors
    from PIL import Image as PILImage

    import dsclora.weights.checkpoints as checkpoints

    def partial(path) -> None:
        with open(path, "wb") as handle:
            handle.write(b"\0" * 100)

    def fail(error: BaseException):
        def write(*args, **kwargs):
            target = args[1] if kind in ("safetensors", "pth", "png") else args[0]
            partial(target)
            raise error

        return write

    enospc = OSError(errno.ENOSPC, "No space left on device")
    if kind == "safetensors":
        message = "Error while serializing: I/O error: No space left on device (os error 28)"
        monkeypatch.setattr(checkpoints, "save_file", fail(safetensors.SafetensorError(message)))
    elif kind == "pth":
        monkeypatch.setattr(
            torch, "save", fail(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos"))
        )
        statvfs = os.statvfs
        monkeypatch.setattr(os, "statvfs", lambda p: os.statvfs_result((*statvfs(p)[:4], 0, *statvfs(p)[5:])))
    elif kind == "png":
        monkeypatch.setattr(PILImage.Image, "save", fail(enospc))
    else:
        monkeypatch.setattr(pathlib.Path, "write_bytes", fail(enospc))


def test_a_failed_write_removes_the_folders_it_made_and_no_other(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.png"
    for kept in (None, tmp_path / "a" / "kept.png"):
        if kept:
            kept.parent.mkdir()
            kept.write_bytes(b"")
        with pytest.raises(RuntimeError, match="writer failed"), atomic_write(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer failed")
        assert not (tmp_path / "a" / "b").exists()
        assert (tmp_path / "a").exists() == bool(kept)  # a folder holding something else stays
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "kept.png"]


@pytest.mark.parametrize("command", ["convert_safetensors", "convert_pth", "export_onnx", "upscale_folder"])
def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(
    capsys, tmp_path: Path, photo_png: Path, monkeypatch, command: str
) -> None:
    Image.open(photo_png).crop((0, 0, 20, 16)).save(photo_png.parent / "second.png")
    out = tmp_path / "out"
    argv, written, kind = {
        "convert_safetensors": (["convert", str(embedded_weights()), str(out / "m.safetensors")], "m.safetensors",
                                "safetensors"),
        "convert_pth": (["convert", str(embedded_weights()), str(out / "m.pth")], "m.pth", "pth"),
        "export_onnx": (["export", "--format", "onnx", "-o", str(out / "m.onnx"), "--no-simplify"], "m.onnx",
                        "bytes"),
        "upscale_folder": (["upscale", str(photo_png.parent), "-o", str(out), "--backend", "torch"],
                           "astronaut.png", "png"),
    }[command]  # fmt: skip
    if command == "export_onnx":
        pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    out.mkdir()
    _disk_fills_up(monkeypatch, kind)
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    *before, last = err.splitlines()
    assert (
        last
        == f"dsclora: error: no space left on device for {out}: {written} was not written (free some space and run again)"
    )
    assert all(line.startswith("backend: ") for line in before)  # upscale says which back-end it chose
    assert not list(out.iterdir())  # no partial file, no temporary, no second image


def test_max_pixels_above_pillows_own_limit_lets_the_image_in(capsys, tmp_path: Path, monkeypatch, no_model) -> None:
    from PIL import Image as PILImage

    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", PILImage.MAX_IMAGE_PIXELS)  # restored after the test
    bomb = tmp_path / "big.png"
    bomb.write_bytes(_png_bomb(10_000, 9_500))  # 95 MP: above Pillow's 89.5 MP, its pixels absent
    code, _, err = run_cli(capsys, "upscale", str(bomb), "-o", str(tmp_path / "o"), "--max-pixels", "50000000")
    assert code == 2 and "10000x9500 = 95000000 pixels, over the limit of 50000000" in err and "--max-pixels" in err
    code, _, err = run_cli(capsys, "upscale", str(bomb), "-o", str(tmp_path / "o"), "--max-pixels", "100000000")
    assert code == 2 and "truncated or corrupt" in err  # past both limits: decoding finds the missing pixels


def test_an_output_too_large_for_memory_is_refused_before_any_forward(
    capsys, tmp_path: Path, photo_png: Path, monkeypatch
) -> None:
    """80x64 at x4 holds 320x256x3 values: ~2.5 MB to assemble and write; with 1 MiB free it cannot be held."""
    import dsclora.runtime.upscale as pipeline

    def no_running(*_args, **_kwargs):
        raise AssertionError("the network ran")

    monkeypatch.setattr(pipeline, "available_memory", lambda device: 2**20)
    monkeypatch.setattr(pipeline, "run", no_running)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "upscale", str(photo_png), "-o", str(out), "--weights", "bicubic", "--scale", "4")
    assert code == 2 and err.count("\n") == 1, err
    assert f"{photo_png}: its x4 output (320x256) needs about 2.3 MiB" in err  # 320·256·3 values x 10 bytes
    assert "more than the 1.0 MiB available" in err and "downscale or crop" in err
    assert not out.exists() or not any(out.iterdir())


def test_a_network_giving_nan_fails_the_image_with_no_output(capsys, tmp_path: Path, photo_png: Path, monkeypatch):
    from dsclora.runtime import tiling

    real_init = tiling.TiledUpscaler.__init__

    def init(self, runner, scale, tile=0, overlap=0):
        real_init(self, lambda x: torch.full((1, 3, x.shape[2] * scale, x.shape[3] * scale), float("nan")), scale)

    monkeypatch.setattr(tiling.TiledUpscaler, "__init__", init)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "upscale", str(photo_png), "-o", str(out), "--weights", "bicubic", "--scale", "2")
    assert code == 1 and f"dsclora: error: the network produced NaN/Inf for {photo_png}" in err, err
    assert "RuntimeWarning" not in err
    assert not out.exists()  # nor the folder made for it


def test_an_output_name_too_long_is_refused_at_plan_time(capsys, tmp_path: Path, photo_png: Path, no_model) -> None:
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "upscale", str(photo_png), "-o", str(out), "--suffix", "a" * 300)
    assert code == 2 and err.count("\n") == 1 and "is too long" in err and "shorten --suffix" in err, err
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    assert f"over the {limit} the file system" in err


def test_fifos_and_devices_are_not_regular_files(capsys, tmp_path: Path, no_model) -> None:
    fifo = tmp_path / "p.png"
    os.mkfifo(fifo)  # opening it to read would block until a writer came
    for src in (fifo, Path("/dev/zero")):
        code, _, err = run_cli(capsys, "upscale", str(src), "-o", str(tmp_path / "out"))
        assert code == 2 and err.count("\n") == 1 and f"{src} is not a regular file" in err, err


def test_eval_names_the_size_of_an_oversized_image_and_no_missing_option(capsys, tmp_path: Path, monkeypatch) -> None:
    from PIL import Image as PILImage

    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", PILImage.MAX_IMAGE_PIXELS)  # restored after the test
    root = make_benchmark(tmp_path / "set", count=2, height=48, width=48)
    (root / "x4" / "HR" / "img1.png").write_bytes(_png_bomb(20_000, 20_000))
    code, _, err = run_cli(capsys, "eval", "--weights", "bicubic", "--scale", "4", "--data", str(root))
    assert code == 2 and err.count("\n") == 1, err
    assert "has 400000000 pixels, over the limit of 268435456" in err and "eval reads images up to" in err
    assert "--max-pixels" not in err


def test_eval_checks_every_pair_before_computing(capsys, tmp_path: Path, monkeypatch, sample_photo) -> None:
    import dsclora.measure.evaluate as evaluate

    def no_computing(*_args, **_kwargs):
        raise AssertionError("an image was computed before every pair was checked")

    monkeypatch.setattr(evaluate, "evaluate_dataset", no_computing)
    cases = {
        "truncated": "truncated or corrupt",
        "mismatch": "LR 10x10 times 4 does not give HR 48x48",
        "tiny": "too small to evaluate at x4",
        "empty": "empty file",
    }
    for case, message in cases.items():
        root = make_benchmark(tmp_path / case, count=2, height=48, width=48)
        hr, lr = root / "x4" / "HR" / "img1.png", root / "x4" / "LR" / "img1.png"
        if case == "truncated":
            hr.write_bytes(hr.read_bytes()[:300])
        elif case == "mismatch":
            Image.fromarray(sample_photo[:10, :10]).save(lr)
        elif case == "tiny":  # 12 pixels: 4 cropped each side leave 4, SSIM's window is 11
            Image.fromarray(sample_photo[:12, :12]).save(hr)
            Image.fromarray(sample_photo[:3, :3]).save(lr)
        else:
            lr.write_bytes(b"")
        code, _, err = run_cli(capsys, "eval", "--weights", "bicubic", "--scale", "4", "--data", str(root))
        assert code == 2 and message in err and err.count("\n") == 1, (case, err)


def test_impossible_requests_are_refused_before_any_work(capsys, tmp_path: Path, no_model) -> None:
    cases = [
        (["export", "--format", "onnx", "--opset", "999", "-o", str(tmp_path / "m.onnx")], "--opset 999: torch"),
        (["profile", "--data", str(tmp_path)], "--data is used by --ntire only"),
        (["profile", "--efdn-ms", "30"], "--efdn-ms is used by --ntire only"),
        (["profile", "--ntire", "--data", str(tmp_path), "--efdn-ms", "-5"], "must be a positive finite number"),
        (["profile", "--ntire", "--data", str(tmp_path), "--efdn-ms", "nan"], "must be a positive finite number"),
    ]
    for argv, message in cases:
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and message in err and err.count("\n") == 1, (argv, err)
    assert not (tmp_path / "m.onnx").exists()


def test_profile_refuses_a_size_that_cannot_fit_in_memory(capsys, monkeypatch) -> None:
    import dsclora.runtime.backends as backends

    def no_running(*_args, **_kwargs):
        raise AssertionError("the network ran")

    monkeypatch.setattr(backends, "make_runner", no_running)
    code, _, err = run_cli(capsys, "profile", "--size", "100000x100000", "--backend", "torch")
    assert code == 2 and "--size 100000x100000: one forward would need about" in err and err.count("\n") == 1


def test_onnx_fp16_io_with_fp32_compute(capsys, tmp_path: Path) -> None:
    """fp32 weights and arithmetic behind fp16 input and output: within the output's fp16 rounding of torch."""
    ort = pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    out = tmp_path / "io16.onnx"
    assert run_cli(capsys, "export", "--format", "onnx", "--io", "fp16", "-o", str(out), "--no-simplify")[0] == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float16)"
    x = to_tensor(imresize(np.asarray(Image.open(embedded_photo(tmp_path))), 0.25))
    got = session.run(None, {"input": x.numpy().astype(np.float16)})[0]
    with torch.no_grad():
        want = load(str(embedded_weights())).module(x.half().float()).clamp(0, 1).numpy()
    assert got.dtype == np.float16 and np.abs(got.astype(np.float32) - want).max() <= 2**-12 + 1e-4


def embedded_photo(folder: Path) -> Path:
    from skimage import data

    path = folder / "photo.png"
    Image.fromarray(data.coffee()[100:196, 200:296]).save(path)
    return path


def test_pgm_holds_gray_and_ppm_colour(capsys, tmp_path: Path, photo_png: Path) -> None:
    code, _, err = run_cli(capsys, "upscale", str(photo_png), "-o", str(tmp_path / "a"), "--ext", "pgm")
    assert code == 2 and "--ext pgm holds grayscale images only" in err and not (tmp_path / "a").exists()
    gray = tmp_path / "gray.png"
    Image.open(photo_png).convert("L").crop((0, 0, 16, 12)).save(gray)
    for ext, magic in (("pgm", b"P5"), ("ppm", b"P6")):
        code, _, err = run_cli(capsys, "upscale", str(gray), "-o", str(tmp_path / ext), "--ext", ext)
        assert code == 0, err
        assert (tmp_path / ext / f"gray.{ext}").read_bytes()[:2] == magic  # the header the suffix promises


def test_animated_images_use_the_first_frame_and_say_so(capsys, tmp_path: Path, sample_photo) -> None:
    frames = [Image.fromarray(sample_photo[i * 20 : i * 20 + 16, :16]) for i in range(3)]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100)
    code, _, err = run_cli(
        capsys, "upscale", str(gif), "-o", str(tmp_path / "o"), "--weights", "bicubic", "--scale", "2"
    )
    assert code == 0, err
    assert "note: 1 input(s) have several frames (e.g. anim.gif: 3); only the first frame of each is upscaled" in err
    first = np.asarray(Image.open(gif).convert("RGB"))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o" / "anim.png")), imresize(first, 2.0))


def test_bicubic_is_allowed_where_it_makes_sense(capsys, tmp_path: Path, photo_png: Path) -> None:
    code, _, err = run_cli(capsys, "upscale", str(photo_png), "-o", str(tmp_path / "b"), "--weights", "bicubic")
    assert code == 2 and "needs --scale" in err
    code, _, err = run_cli(
        capsys, "upscale", str(photo_png), "-o", str(tmp_path / "b"), "--weights", "bicubic", "--scale", "2"
    )
    assert code == 0, err
    expected = imresize(np.asarray(Image.open(photo_png)), 2.0)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b" / "astronaut.png")), expected)
    for argv in (["profile", "--weights", "bicubic"], ["export", "--weights", "bicubic", "--format", "onnx",
                                                        "-o", str(tmp_path / "b.onnx")]):  # fmt: skip
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and "needs a network, not bicubic" in err


def test_eval_says_which_layouts_it_looked_for(capsys, tmp_path: Path) -> None:
    for scale in (2, 3, 4):
        make_benchmark(tmp_path / "Set", scale=scale, count=1, height=48, width=48)
    code, _, err = run_cli(capsys, "eval", "--weights", "bicubic", "--scale", "5", "--data", str(tmp_path / "Set"))
    assert code == 2 and "no x5 data" in err and "x2, x3, x4" in err


def test_ntire_layout_evaluates_like_the_plain_one(capsys, tmp_path: Path) -> None:
    """A fake DIV2K_LSDIR folder (<name>_HR/NNNN.png + <name>_LR/NNNNx4.png) built from a benchmark's files."""
    set5 = make_benchmark(tmp_path / "Set", count=5, height=64, width=56) / "x4"
    kit = tmp_path / "kit"
    (kit / "DIV2K_LSDIR_valid_HR").mkdir(parents=True)
    (kit / "DIV2K_LSDIR_valid_LR").mkdir()
    for i, hr in enumerate(sorted((set5 / "HR").glob("*.png"))):
        (kit / "DIV2K_LSDIR_valid_HR" / f"{i + 801:04d}.png").write_bytes(hr.read_bytes())
        (kit / "DIV2K_LSDIR_valid_LR" / f"{i + 801:04d}x4.png").write_bytes((set5 / "LR" / hr.name).read_bytes())
    results = {}
    for name, root in (("plain", set5.parent), ("kit", kit), ("hr_folder", kit / "DIV2K_LSDIR_valid_HR")):
        assert run_cli(capsys, "eval", "--data", str(root), "--json", str(tmp_path / f"{name}.json"))[0] == 0
        results[name] = json.loads((tmp_path / f"{name}.json").read_text())["datasets"][0]
    assert results["kit"]["images"] == 5
    for key in ("psnr_y", "ssim_y", "psnr_rgb"):
        assert results["kit"][key] == results["plain"][key] == results["hr_folder"][key]
    code, _, err = run_cli(
        capsys, "profile", "--ntire", "--data", str(kit), "--runs", "1", "--json", str(tmp_path / "n.json")
    )
    assert code == 0, err
    report = json.loads((tmp_path / "n.json").read_text())["ntire"]
    assert report["images"] == 5 and report["psnr_rgb"] == pytest.approx(results["kit"]["psnr_rgb"], abs=1e-9)
    assert report["params_m"] == 0.130828 and report["convs"] == 22 and report["score"] is None
    # NTIRE 2025 score by hand (docs/method.md §4) with EFDN's runtime given
    assert run_cli(capsys, "profile", "--ntire", "--data", str(kit), "--runs", "1", "--efdn-ms", "1000",
                   "--json", str(tmp_path / "s.json"))[0] == 0  # fmt: skip
    scored = json.loads((tmp_path / "s.json").read_text())["ntire"]
    import math

    expected = 0.7 * math.exp(2 * scored["runtime_ms"] / 1000) + 0.15 * math.exp(2 * scored["flops_g"] / 16.70)
    expected += 0.15 * math.exp(2 * scored["params_m"] / 0.276)
    assert scored["score"] == pytest.approx(expected, rel=1e-12)


def test_weights_list_shows_the_default_first_and_survives_a_closed_pipe(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    listing = subprocess.run([sys.executable, "-m", "dsclora.cli", "weights", "list"], capture_output=True, text=True,
                             env=env, check=True).stdout  # fmt: skip
    assert listing.startswith("default ")
    proc = subprocess.Popen([sys.executable, "-m", "dsclora.cli", "weights", "list"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)  # fmt: skip
    proc.stdout.readline()
    proc.stdout.close()  # what `| head -1` does
    _, err = proc.communicate()
    assert proc.returncode == 0 and b"error" not in err and b"Traceback" not in err


def test_auto_tile_when_a_whole_image_exceeds_the_memory_budget(capsys, tmp_path: Path, sample_photo) -> None:
    src = tmp_path / "big.png"
    Image.fromarray(sample_photo[:300, :320]).save(src)
    code, _, err = run_cli(capsys, "upscale", str(src), "-o", str(tmp_path / "a"), "--memory-budget", "64")
    assert code == 0 and "tile: " in err and "(auto: a whole image would need more than 64 MiB)" in err
    code, _, err = run_cli(
        capsys, "upscale", str(src), "-o", str(tmp_path / "b"), "--memory-budget", "64", "--tile", "0"
    )
    assert code == 0 and "tile: " not in err
    a = np.asarray(Image.open(tmp_path / "a" / "big.png")).astype(int)
    b = np.asarray(Image.open(tmp_path / "b" / "big.png")).astype(int)
    assert np.abs(a - b).max() <= 1  # tiles with the receptive radius: the same image


def test_eval_records_the_precision_it_computed_in(capsys, tmp_path: Path) -> None:
    """Published figures are fp32 unless asked otherwise, and the JSON always says which precision made them."""
    argv = ["eval", "--data", str(make_benchmark(tmp_path / "Set", count=1, height=48, width=48))]
    code, _, err = run_cli(capsys, *argv, "--json", str(tmp_path / "a.json"))
    assert code == 0, err
    assert json.loads((tmp_path / "a.json").read_text())["precision"] == "fp32"
    code, _, err = run_cli(capsys, *argv, "--precision", "auto", "--json", str(tmp_path / "b.json"))
    chosen = json.loads((tmp_path / "b.json").read_text())["precision"]
    assert code == 0 and f"precision {chosen} (" in err and "precision auto: " in err, err


def test_tiles_too_small_to_be_useful_are_refused_and_an_unused_overlap_is_said(capsys, tmp_path, photo_png) -> None:
    code, _, err = run_cli(capsys, "upscale", str(photo_png), "-o", str(tmp_path / "a"), "--tile", "1")
    assert code == 2 and "must be 0 (whole images) or at least 16, got 1" in err and not (tmp_path / "a").exists()
    argv = ["upscale", str(photo_png), "-o", str(tmp_path / "b"), "--tile", "0", "--tile-overlap", "8"]
    code, _, err = run_cli(capsys, *argv, "--precision", "fp32")
    assert code == 0 and "note: --tile-overlap is unused" in err, err


def test_available_memory_respects_an_address_space_limit(monkeypatch, tmp_path: Path) -> None:
    """`ulimit -v` caps what an allocation can get below MemAvailable: the memory checks must see the cap."""
    import resource

    from dsclora import devices

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 33554432 kB\nMemAvailable: 16777216 kB\n")  # 16 GiB available
    status = tmp_path / "status"
    status.write_text("Name: python\nVmSize: 2097152 kB\n")  # 2 GiB already mapped
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (3 * 2**30, resource.RLIM_INFINITY))
    assert devices._address_space_left(status) == 2**30  # a 3 GiB limit, 2 GiB mapped
    monkeypatch.setattr(devices, "_address_space_left", lambda: 2**30)
    assert devices.available_memory(torch.device("cpu"), meminfo) == 2**30
    monkeypatch.setattr(devices, "_address_space_left", lambda: None)  # no limit: MemAvailable
    assert devices.available_memory(torch.device("cpu"), meminfo) == 16 * 2**30
