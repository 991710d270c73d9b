"""``dsclora upscale`` on videos end to end: clips made here with PyAV (a changing pattern, an audio track, a
subtitle track), upscaled through the CLI and read back with PyAV: frame count, time stamps, frame rate, audio and
subtitle packets bit for bit, colour tags, exact frames with a lossless codec, and clean refusals and interrupts.

Mechanics run with ``--weights bicubic --scale 2`` (fast); one check runs the default network on a few tiny frames.
"""

from __future__ import annotations

import os
import signal
import struct
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from dsclora.cli import main
from dsclora.data.images import to_array, to_tensor, to_uint8
from dsclora.runtime import tiling
from dsclora.weights.load import load

try:
    import av
except ImportError:  # the no-PyAV test below still runs
    av = None

needs_av = pytest.mark.skipif(av is None, reason="PyAV not installed (the video extra: pip install 'dsclora[video]')")
MS = Fraction(1, 1000)


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def pattern(i: int, height: int, width: int) -> np.ndarray:
    """Frame ``i``: a colour gradient whose hue drifts with ``i`` and a bright square moving across it."""
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), np.full_like(xx, (i * 37) % 256)])
    rgb = rgb.transpose(1, 2, 0).astype(np.uint8)
    x0 = (i * 3) % max(width - 6, 1)
    rgb[2:8, x0 : x0 + 6] = 250
    return rgb


def make_clip(
    path: Path,
    frames: int = 24,
    size: tuple[int, int] = (40, 24),
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    pts_ms: list[int] | None = None,
    audio: bool = True,
    subtitles: bool = True,
    colour: dict | None = None,
    extras: bool = False,
    audio_codec: str = "flac",
) -> list[np.ndarray]:
    """Write a clip (time base 1 ms) and return its RGB frames as given to the encoder; ``extras`` adds an
    attachment (a font, as Matroska files with styled subtitles carry) and two chapters."""
    width, height = size
    pts_ms = pts_ms or [40 * i for i in range(frames)]
    images = [pattern(i, height, width) for i in range(len(pts_ms))]
    with av.open(str(path), "w") as out:
        out.metadata["title"] = "a test clip"
        options = {"qp": "0"} if codec == "libx264" else {}
        video = out.add_stream(codec, rate=25, time_base=MS, options=options)
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        for key, value in (colour or {}).items():
            setattr(video.codec_context, key, value)
        sound = out.add_stream(audio_codec, rate=8000, layout="mono") if audio else None
        if sound is not None:
            sound.metadata["language"] = "fra"
        text = out.add_mux_stream("subrip", time_base=MS) if subtitles else None
        if extras:
            out.add_attachment("font.ttf", "application/x-truetype-font", b"\x00\x01\x00\x00 not really a font")
            half = pts_ms[len(pts_ms) // 2]
            out.set_chapters(
                [
                    {"id": 1, "start": 0, "end": half, "time_base": MS, "metadata": {"title": "first"}},
                    {"id": 2, "start": half, "end": pts_ms[-1] + 40, "time_base": MS, "metadata": {"title": "second"}},
                ]
            )
        for i, (ms, image) in enumerate(zip(pts_ms, images, strict=True)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format=pix_fmt)
            frame.pts, frame.time_base = ms, MS
            frame.duration = (pts_ms[i + 1] - ms) if i + 1 < len(pts_ms) else 40
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if sound is not None:
            seconds = (pts_ms[-1] + 40) / 1000
            t = np.arange(int(8000 * seconds)) / 8000
            samples = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
            fmt = "s16" if audio_codec == "flac" else "fltp"  # what each encoder takes
            values = samples if fmt == "s16" else (samples / 32768).astype(np.float32)
            for k in range(0, len(samples), 1024):
                chunk = av.AudioFrame.from_ndarray(values[None, k : k + 1024], format=fmt, layout="mono")
                chunk.sample_rate, chunk.pts = 8000, k
                out.mux(sound.encode(chunk))
            out.mux(sound.encode(None))
        if text is not None:
            for j in range(3):
                packet = av.Packet(f"line {j}".encode())
                packet.stream, packet.pts, packet.dts, packet.duration = text, 300 * j, 300 * j, 200
                out.mux(packet)
    return images


def packets(path: Path, kind: str) -> list[tuple[float, bytes]]:
    """(time in seconds, bytes) of every packet of the first stream of ``kind``."""
    with av.open(str(path)) as container:
        stream = getattr(container.streams, kind)[0]
        return [(float(p.pts * p.time_base), bytes(p)) for p in container.demux(stream) if p.size]


def frame_times(path: Path) -> list[float]:
    with av.open(str(path)) as container:
        return [float(f.pts * f.time_base) for f in container.decode(video=0)]


def rgb_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------------------------------- what is kept


@needs_av
def test_video_keeps_frames_timing_audio_subtitles_and_tags(capsys, tmp_path: Path) -> None:
    src = tmp_path / "clip.mp4.mkv"
    colour = {"color_range": 1, "colorspace": 1, "color_primaries": 1, "color_trc": 1}  # BT.709, limited range
    make_clip(src, frames=30, colour=colour, extras=True)
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "upscale", str(src), "-o", str(out), "--weights", "bicubic", "--scale", "2")
    assert code == 0, err
    dst = out / "clip.mp4_x2.mkv"
    assert leftovers(out) == [dst.name]  # no temporary file left beside it
    assert f"wrote {dst}: 30 frames 80x48" in stdout
    assert "frame/s" not in err  # no progress bar drawn into a non-terminal
    assert frame_times(dst) == frame_times(src) == [0.04 * i for i in range(30)]
    with av.open(str(src)) as a, av.open(str(dst)) as b:
        assert (b.streams.video[0].width, b.streams.video[0].height) == (80, 48)
        assert b.streams.video[0].average_rate == a.streams.video[0].average_rate == 25
        assert b.duration == a.duration
        assert b.metadata["title"] == "a test clip"
        assert [s.type for s in b.streams] == ["video", "audio", "subtitle", "attachment"]
        assert b.streams.audio[0].metadata["language"] == "fra"
        assert (b.streams[3].name, b.streams[3].data) == (a.streams[3].name, a.streams[3].data)
        assert b.chapters() == a.chapters() and [c["metadata"]["title"] for c in b.chapters()] == ["first", "second"]
        tags = b.streams.video[0].codec_context
        assert (tags.color_range, tags.colorspace, tags.color_primaries, tags.color_trc) == (1, 1, 1, 1)
    assert packets(dst, "audio") == packets(src, "audio")  # copied bit for bit, same time stamps
    assert len(packets(src, "audio")) > 10
    assert packets(dst, "subtitles") == packets(src, "subtitles") == [(0.3 * j, f"line {j}".encode()) for j in range(3)]


@needs_av
def test_lossless_codec_frames_equal_the_network_on_each_decoded_frame(capsys, tmp_path: Path) -> None:
    src = tmp_path / "tiny.mkv"
    make_clip(src, frames=4, size=(20, 12), codec="ffv1", pix_fmt="bgr0", audio=False, subtitles=False)
    dst = tmp_path / "tiny_up.mkv"
    code, _, err = run_cli(capsys, "upscale", str(src), "-o", str(dst), "--codec", "ffv1", "--backend", "torch")
    assert code == 0, err
    model = load(None).runnable()
    inputs, outputs = rgb_frames(src), rgb_frames(dst)
    assert len(outputs) == len(inputs) == 4
    for lr, sr in zip(inputs, outputs, strict=True):
        with torch.inference_mode():
            expected = to_uint8(to_array(model(to_tensor(lr))))
        assert sr.shape == (48, 80, 3)
        np.testing.assert_array_equal(sr, expected)


@needs_av
def test_variable_frame_rate_keeps_its_time_stamps(capsys, tmp_path: Path) -> None:
    src = tmp_path / "vfr.mkv"
    pts_ms = [0, 40, 120, 130, 200, 410, 420, 500, 733, 800]
    make_clip(src, pts_ms=pts_ms, subtitles=False)
    for name in ("vfr_up.mp4", "vfr_up.mkv"):  # -o names the file; its suffix picks the container
        dst = tmp_path / name
        code, _, err = run_cli(capsys, "upscale", str(src), "-o", str(dst), "--weights", "bicubic", "--scale", "2")
        assert code == 0, err
        assert frame_times(dst) == pytest.approx([ms / 1000 for ms in pts_ms], abs=1e-9)
        assert packets(dst, "audio") == packets(src, "audio")


@needs_av
def test_start_and_duration_keep_a_piece_in_sync(capsys, tmp_path: Path) -> None:
    src = tmp_path / "clip.mkv"
    make_clip(src, frames=40)
    out = tmp_path / "out"
    argv = ["upscale", str(src), "-o", str(out), "--weights", "bicubic", "--scale", "2"]
    code, _, err = run_cli(capsys, *argv, "--start", "0.4", "--duration", "0:00.6")
    assert code == 0, err
    dst = out / "clip_x2.mkv"
    assert frame_times(dst) == pytest.approx([0.04 * i for i in range(15)])  # frames 10-24, shifted to 0
    kept = [(t - 0.4, data) for t, data in packets(src, "audio") if 0.4 - 1e-6 <= t < 1.0 - 1e-6]
    got = packets(dst, "audio")
    assert [data for _, data in got] == [data for _, data in kept]
    assert [t for t, _ in got] == pytest.approx([t for t, _ in kept], abs=1e-3)


@needs_av
def test_duration_alone_keeps_the_audio_priming_packet(capsys, tmp_path: Path) -> None:
    """AAC's first packet is stamped before 0 (its encoder delay): a piece from the start keeps it. MP4 keeps the
    times exactly (edit lists); Matroska cannot store a negative time, so FFmpeg shifts every stream alike."""
    src = tmp_path / "clip.mp4"
    make_clip(src, frames=40, subtitles=False, audio_codec="aac")
    audio = packets(src, "audio")
    delay = -audio[0][0]
    assert delay == pytest.approx(1024 / 8000)  # one AAC frame at 8 kHz
    kept = [(t, data) for t, data in audio if t < 0.6 - 1e-6]
    for name, shift in (("piece.mp4", 0.0), ("piece.mkv", delay)):
        dst = tmp_path / name
        argv = ["upscale", str(src), "-o", str(dst), "--weights", "bicubic", "--scale", "2", "--duration", "0.6"]
        code, _, err = run_cli(capsys, *argv)
        assert code == 0, err
        assert frame_times(dst) == pytest.approx([0.04 * i + shift for i in range(15)], abs=1e-3)
        got = packets(dst, "audio")
        assert [data for _, data in got] == [data for _, data in kept]
        assert [t for t, _ in got] == pytest.approx([t + shift for t, _ in kept], abs=1e-3)


@needs_av
def test_rotated_video_is_stored_upright(capsys, tmp_path: Path) -> None:
    """An MP4 whose track header says "display turned 90° clockwise" (as phones write): the output's frames are
    already turned, so it displays the same without the flag."""
    plain = tmp_path / "plain.mp4"
    make_clip(plain, frames=3, size=(32, 16), audio=False, subtitles=False)
    data = bytearray(plain.read_bytes())
    tkhd = data.find(b"tkhd")
    matrix = tkhd + 4 + 4 + (20 if data[tkhd + 4] == 0 else 32) + 16  # version/flags, times, ids, reserved
    assert struct.unpack(">9i", data[matrix : matrix + 36])[:2] == (1 << 16, 0)  # identity before
    data[matrix : matrix + 36] = struct.pack(">9i", 0, 1 << 16, 0, -(1 << 16), 0, 0, 0, 0, 1 << 30)
    rotated = tmp_path / "rotated.mp4"
    rotated.write_bytes(bytes(data))
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "upscale", str(rotated), "-o", str(out), "--weights", "bicubic", "--scale", "2")
    assert code == 0, err
    frame = rgb_frames(out / "rotated_x2.mkv")[0]
    assert frame.shape == (64, 32, 3)  # 32x16 stored, 16x32 displayed, x2
    # turned clockwise, the square in rows 2-7, columns 0-5 of the stored 16x32 frame is in rows 0-5, columns
    # 8-13 of the 32x16 displayed one: rows 0-11, columns 16-27 upscaled (a counter-clockwise turn: rows 52-63)
    bright = np.argwhere(frame.min(axis=2) > 200)
    assert bright[:, 1].min() >= 14 and bright[:, 0].max() <= 14


# ---------------------------------------------------------------------------------------- choosing and refusing


@needs_av
def test_videos_are_recognised_by_probing_and_mix_with_images(capsys, tmp_path: Path) -> None:
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    make_clip(src / "recording.mkv", frames=5, audio=False, subtitles=False)
    (src / "recording.mkv").rename(src / "recording.bin")  # no video suffix
    Image.fromarray(pattern(0, 12, 16)).save(src / "still.png")
    out = tmp_path / "out"
    argv = ["upscale", str(src / "recording.bin"), str(src / "still.png"), "-o", str(out), "--weights", "bicubic"]
    code, _, err = run_cli(capsys, *argv, "--scale", "2")
    assert code == 0, err
    assert leftovers(out) == ["recording_x2.mkv", "still.png"]
    assert len(frame_times(out / "recording_x2.mkv")) == 5


@needs_av
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--codec", "nonsense"], "--codec nonsense: this FFmpeg has no such encoder"),
        (["--codec", "ffv1", "--crf", "10"], "--crf applies to"),
        (["--pix-fmt", "rgb24"], "--pix-fmt rgb24: libx264 cannot write it"),
        (["--start", "5"], "--start 5 s: "),
        (["--codec-option", "nonsense=1"], "libx264 has no option nonsense"),
        (["--crf", "1000"], "--crf 1000: libx264 takes 0 to 51"),
        (["--codec-option", "crf=abc"], "--codec-option crf=abc: libx264 refuses it"),
    ],
)
def test_bad_video_options_are_refused_before_any_work(capsys, tmp_path: Path, extra, message) -> None:
    src = tmp_path / "clip.mkv"
    make_clip(src, frames=5, subtitles=False)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "upscale", str(src), "-o", str(out), "--weights", "bicubic", "--scale", "2", *extra)
    assert code == 2
    assert err.startswith("dsclora: error: ") and message in err and err.count("\n") == 1
    assert leftovers(out) == []


@needs_av
def test_video_outputs_follow_the_image_rules(capsys, tmp_path: Path) -> None:
    src = tmp_path / "clip.mkv"
    make_clip(src, frames=3, audio=False, subtitles=False)
    argv = ["upscale", str(src), "--weights", "bicubic", "--scale", "2"]
    assert run_cli(capsys, *argv, "-o", str(tmp_path))[0] == 0  # beside the input: clip_x2.mkv
    assert (tmp_path / "clip_x2.mkv").is_file()
    code, _, err = run_cli(capsys, *argv, "-o", str(tmp_path))
    assert code == 2 and "clip_x2.mkv exists; add --overwrite" in err
    code, _, err = run_cli(capsys, *argv, "-o", str(tmp_path), "--skip-existing")
    assert code == 0 and "skipped (exists)" in err
    code, _, err = run_cli(capsys, *argv, "-o", str(tmp_path), "--suffix", "")
    assert code == 2 and "clip.mkv would overwrite one of upscale's inputs" in err
    code, _, err = run_cli(capsys, *argv, "-o", str(tmp_path), "--suffix", "/../x")
    assert code == 2 and "a suffix stays in the file name" in err
    code, _, err = run_cli(
        capsys, "upscale", str(src), str(src.with_name("clip_x2.mkv")), "-o", str(tmp_path / "2.mkv")
    )
    assert code == 2 and "names a video file: give exactly one video input" in err


@needs_av
def test_a_stream_the_container_cannot_carry_is_refused_before_any_work(capsys, tmp_path: Path) -> None:
    """MP4 subtitles (mov_text) have no place in Matroska: refused, naming the container that keeps them."""
    src = tmp_path / "phone.mp4"
    with av.open(str(src), "w") as out:
        video = out.add_stream("libx264", rate=25, time_base=MS)
        video.width, video.height = 16, 16
        text = out.add_mux_stream("mov_text", time_base=MS)
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(pattern(i, 16, 16), format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = 40 * i, MS
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        packet = av.Packet(struct.pack(">H", 2) + b"hi")
        packet.stream, packet.pts, packet.dts, packet.duration = text, 0, 0, 80
        out.mux(packet)
    argv = ["upscale", str(src), "--weights", "bicubic", "--scale", "2"]
    code, _, err = run_cli(capsys, *argv, "-o", str(tmp_path / "out"))
    assert code == 2 and "subtitle mov_text cannot be copied into matroska" in err and "phone_up.mp4" in err
    assert leftovers(tmp_path / "out") == []
    dst = tmp_path / "phone_up.mp4"
    code, _, err = run_cli(capsys, *argv, "-o", str(dst))
    assert code == 0, err
    assert packets(dst, "subtitles") == packets(src, "subtitles")


@needs_av
def test_damaged_videos_fail_cleanly_with_no_output(capsys, tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    out = tmp_path / "out"
    argv = ["-o", str(out), "--weights", "bicubic", "--scale", "2"]
    code, stdout, err = run_cli(capsys, "upscale", str(text), *argv)
    assert code == 2 and stdout == ""
    assert err.startswith(f"dsclora: error: cannot read {text} as a video: ") and err.count("\n") == 1
    whole = tmp_path / "whole.mkv"
    make_clip(whole, frames=60, subtitles=False)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    code, stdout, err = run_cli(capsys, "upscale", str(cut), *argv)
    assert code == 1 and "wrote" not in stdout
    assert f"dsclora: error: {cut}: damaged or cut short" in err
    assert leftovers(out) == []  # neither the output nor its temporary file


@needs_av
def test_interrupt_leaves_no_finished_looking_output(capsys, monkeypatch, tmp_path: Path) -> None:
    src = tmp_path / "clip.mkv"
    make_clip(src, frames=20)
    calls = 0
    real = tiling.TiledUpscaler.__call__
    out = tmp_path / "out"
    during: list[str] = []

    def interrupted(self, x):
        nonlocal calls
        calls += 1
        if calls == 6:  # Ctrl-C while the network works on the 6th frame, five handed to the encoder
            during.extend(leftovers(out))
            raise KeyboardInterrupt
        return real(self, x)

    monkeypatch.setattr(tiling.TiledUpscaler, "__call__", interrupted)
    code, _, err = run_cli(capsys, "upscale", str(src), "-o", str(out), "--weights", "bicubic", "--scale", "2")
    assert code == 130 and "interrupted" in err
    assert calls == 6
    assert len(during) == 1 and during[0].startswith(".clip_x2.mkv.")  # the output, under its temporary name
    assert leftovers(out) == []


@needs_av
def test_sigterm_cleans_up_like_an_interrupt(capsys, monkeypatch, tmp_path: Path) -> None:
    src = tmp_path / "clip.mkv"
    make_clip(src, frames=10)
    calls = 0
    real = tiling.TiledUpscaler.__call__
    out = tmp_path / "out"

    def terminated(self, x):
        nonlocal calls
        calls += 1
        if calls == 4:  # `kill` while the network works on the 4th frame
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, x)

    monkeypatch.setattr(tiling.TiledUpscaler, "__call__", terminated)
    code, _, err = run_cli(capsys, "upscale", str(src), "-o", str(out), "--weights", "bicubic", "--scale", "2")
    assert code == 130 and "interrupted" in err
    assert leftovers(out) == []  # no hidden temporary left behind


def nan_network(monkeypatch) -> None:
    """Every TiledUpscaler made from now on runs a network whose output is all NaN."""
    real_init = tiling.TiledUpscaler.__init__

    def init(self, runner, scale, tile=0, overlap=0):
        def nan(x):
            return torch.full((x.shape[0], x.shape[1], x.shape[2] * scale, x.shape[3] * scale), float("nan"))

        real_init(self, nan, scale, tile, overlap)

    monkeypatch.setattr(tiling.TiledUpscaler, "__init__", init)


@needs_av
def test_a_network_giving_nan_fails_the_video_with_no_output(capsys, monkeypatch, tmp_path: Path) -> None:
    src = tmp_path / "clip.mkv"
    make_clip(src, frames=5, subtitles=False)
    nan_network(monkeypatch)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "upscale", str(src), "-o", str(out), "--weights", "bicubic", "--scale", "2")
    assert code == 1 and f"the network produced NaN/Inf for {src}" in err, err
    assert "RuntimeWarning" not in err
    assert leftovers(out) == []


@needs_av
def test_an_audio_file_is_said_to_have_no_video_stream(capsys, tmp_path: Path) -> None:
    src = tmp_path / "song.m4a"
    with av.open(str(src), "w", format="mp4") as out:
        sound = out.add_stream("aac", rate=8000, layout="mono")
        samples = (np.sin(np.arange(8000) / 3) * 0.3).astype(np.float32)
        for k in range(0, len(samples), 1024):
            chunk = av.AudioFrame.from_ndarray(samples[None, k : k + 1024], format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts = 8000, k
            out.mux(sound.encode(chunk))
        out.mux(sound.encode(None))
    code, _, err = run_cli(capsys, "upscale", str(src), "-o", str(tmp_path / "out"), "--weights", "bicubic")
    assert code == 2 and err.count("\n") == 1
    assert f"{src}: no video stream, nothing to upscale (it holds audio only)" in err, err


def test_video_without_pyav_names_the_extra(capsys, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "av", None)  # import av now raises ImportError, as where it is not installed
    src = tmp_path / "clip.mp4"
    src.write_bytes(os.urandom(64))
    code, _, err = run_cli(capsys, "upscale", str(src), "-o", str(tmp_path / "out"))
    assert code == 2
    assert err == "dsclora: error: videos need PyAV, the optional video extra: pip install 'dsclora[video]'\n"


def test_time_options_parse_seconds_and_clock_times() -> None:
    from dsclora.cli import build_parser

    parse = build_parser().parse_args
    args = parse(["upscale", "a.mp4", "-o", "o", "--start", "1:02:03.5", "--duration", "90"])
    assert (args.start, args.duration) == (3723.5, 90.0)
    assert parse(["upscale", "a.mp4", "-o", "o", "--start", "01:30"]).start == 90.0


def test_batches_follow_the_device_the_tiling_and_the_budget() -> None:
    from dsclora.runtime.video import MAX_BATCH, batch_size, frames_per_batch

    assert frames_per_batch(100, 350) == 3
    assert frames_per_batch(100, 10**9) == MAX_BATCH
    assert frames_per_batch(100, 99) == 1
    whole = tiling.TiledUpscaler(lambda x: x, scale=4)
    assert batch_size(torch.device("cpu"), whole, (270, 480), 10**12) == 1
    tiled = tiling.TiledUpscaler(lambda x: x, scale=4, tile=128)
    assert batch_size(torch.device("cuda"), tiled, (270, 480), 10**12) == 1  # decided before any GPU call
