"""Video upscaling speed: frames per second of the whole pipeline (decode, network, encode, mux) beside the
network alone on the same frames and back-end, so the pipeline's overhead is a ratio (goal: at most 1.15x).

The script makes its own clip: ``--frames`` frames of 480x270 at 25 frames/s (a slow pan over scikit-image's
astronaut photo, a synthetic pattern where scikit-image is missing) with an audio track, encoded as H.264. Each
back-end then upscales it x4 to 1920x1080 with the default encoder (libx264, CRF 18) as ``dsclora upscale``
does, in rounds: per round and back-end, the network alone on the clip's decoded frames (one forward per frame,
after two warm-up forwards), then the pipeline end to end. Ratio = pipeline time / network time of the same
round, in wall-clock time and in this process's CPU time (on a machine shared with other jobs the wall clock
moves with their load between the two passes; CPU time much less); medians over rounds. Also measured: each
back-end on pairs of frames against single frames (whether batching would gain), the pipeline with a network
that costs nothing (nearest-neighbour x4: decoding, colour conversion and encoding alone), the RGB PSNR of the encoded output against the network's own frames (what the
default encoder loses), and libx264 at CRF 18 with the presets medium, fast and veryfast on those frames (CPU
time, size, PSNR: why the default is veryfast).

    python benchmarks/video.py [--frames 24] [--rounds 3] [--device cpu|cuda] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dsclora.data.images import to_array, to_tensor, to_uint8
from dsclora.data.video import DecodedFrame, VideoReader, choose_encoding, output_format, probe, require_av
from dsclora.devices import cpu_model
from dsclora.fs import atomic_write
from dsclora.runtime.backends import make_runner
from dsclora.runtime.tiling import TiledUpscaler
from dsclora.runtime.video import VideoJob, VideoOptions, batch_size, upscale_video
from dsclora.weights.load import load

SIZE = (270, 480)  # LR height, width: a 1920x1080 output at x4
CPU_BACKENDS = ("torch", "channels_last", "onnxruntime", "compile")
CUDA_BACKENDS = ("torch", "channels_last", "compile")


def make_clip(path: Path, frames: int) -> str:
    """A 480x270 H.264 clip with an AAC track; returns what its pictures are."""
    av = require_av()
    h, w = SIZE
    try:
        from skimage import data

        photo = data.astronaut()  # 512x512
        source = "a pan over scikit-image's astronaut"

        def picture(i: int) -> np.ndarray:
            x = (i * 2) % (photo.shape[1] - w)
            return np.ascontiguousarray(photo[100 : 100 + h, x : x + w])
    except ImportError:
        yy, xx = np.mgrid[0:h, 0:w]
        source = "a synthetic moving pattern (scikit-image not installed)"

        def picture(i: int) -> np.ndarray:
            rgb = np.stack([np.sin((xx + 3 * i) / 7.0), np.cos(yy / 5.0), np.sin((xx + yy - i) / 11.0)], axis=2)
            return ((rgb + 1) * 127.5).astype(np.uint8)

    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=25, options={"crf": "18"})
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        audio = out.add_stream("aac", rate=48000)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(picture(i), format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        samples = (np.sin(np.arange(frames * 48000 // 25) * 2 * np.pi * 440 / 48000) * 0.2).astype(np.float32)
        for k in range(0, len(samples), 1024):
            chunk = av.AudioFrame.from_ndarray(np.stack([samples[k : k + 1024]] * 2), format="fltp", layout="stereo")
            chunk.sample_rate, chunk.pts = 48000, k
            out.mux(audio.encode(chunk))
        out.mux(audio.encode(None))
    return source


def decoded_inputs(info, device: torch.device) -> list[torch.Tensor]:
    with VideoReader(info) as reader:
        return [to_tensor(item.rgb).to(device) for item in reader if isinstance(item, DecodedFrame)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def network_seconds(upscaler: TiledUpscaler, inputs: list[torch.Tensor], device: torch.device) -> tuple[float, float]:
    """(wall, CPU) seconds of one forward per input."""
    sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    for x in inputs:
        upscaler(x)
    sync(device)
    return time.perf_counter() - start, time.process_time() - cpu


def pipeline_seconds(
    job: VideoJob, upscaler: TiledUpscaler, device: torch.device, batch: int
) -> tuple[float, float, int]:
    """(wall, CPU) seconds of the whole pipeline, and the frames it wrote."""
    start, cpu = time.perf_counter(), time.process_time()
    frames = upscale_video(job, upscaler, device, VideoOptions(), batch, progress=False)
    sync(device)
    return time.perf_counter() - start, time.process_time() - cpu, frames


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mse)) if mse else float("inf")


def rgb_frames(path: Path) -> list[np.ndarray]:
    """Frames as the reference decoder gives them (PyAV, swscale with its defaults)."""
    av = require_av()
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def encoder_presets(frames: list[np.ndarray], work: Path) -> dict[str, dict[str, float]]:
    """libx264 at CRF 18 with each preset on the same upscaled 1080p frames: CPU time, size, PSNR to the frames."""
    av = require_av()
    results = {}
    for preset in ("medium", "fast", "veryfast"):
        path = work / f"{preset}.mkv"
        yuv = []
        for image in frames:
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.colorspace = 6  # BT.601, as the pipeline tags an untagged SD source
            yuv.append(frame.reformat(format="yuv420p", dst_color_range=1))
        cpu = time.process_time()
        with av.open(str(path), "w") as out:
            stream = out.add_stream("libx264", rate=25, options={"crf": "18", "preset": preset})
            stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
            for i, frame in enumerate(yuv):
                frame.pts = i
                out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
        cpu = time.process_time() - cpu
        with av.open(str(path)) as container:
            decoded = [f.reformat(format="rgb24").to_ndarray() for f in container.decode(video=0)]
        results[preset] = {
            "cpu_ms_per_frame": cpu / len(frames) * 1e3,
            "kib_per_frame": path.stat().st_size / len(frames) / 1024,
            "psnr_rgb_db_vs_frames": statistics.mean(psnr(a, b) for a, b in zip(decoded, frames, strict=True)),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None, help="weights name or file (default: the embedded model)")
    parser.add_argument("--frames", type=int, default=24, help="frames in the clip (default 24)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every back-end (default 3)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run (default cpu)")
    parser.add_argument("--backends", nargs="*", default=None, help="back-ends to run (default: all)")
    parser.add_argument("--json", help="output (default benchmarks/results/video.json, video_cuda.json on a GPU)")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("video.py: --device cuda but no CUDA device is available")
    args.json = args.json or f"benchmarks/results/video{'_cuda' if cuda else ''}.json"
    loaded = load(args.weights, device, network=True)
    av = require_av()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        clip = work / "clip.mp4"
        source = make_clip(clip, args.frames)
        info = probe(clip)
        encoding = choose_encoding(None, None, None, info)
        dst, io_dst = work / "clip_x4.mkv", work / "io_x4.mkv"
        job = VideoJob(info, dst, output_format(dst), encoding)
        io_job = VideoJob(info, io_dst, output_format(io_dst), encoding)
        inputs = decoded_inputs(info, device)
        pairs = [torch.cat(inputs[i : i + 2]) for i in range(0, len(inputs) - 1, 2)]
        upscalers = {}
        for backend in args.backends or (CUDA_BACKENDS if cuda else CPU_BACKENDS):
            try:
                runner = make_runner(loaded, backend, device, "fp16" if cuda else "fp32")
            except Exception as exc:  # e.g. ONNX Runtime not installed
                print(f"{backend}: skipped ({type(exc).__name__}: {exc})", file=sys.stderr)
                continue
            upscalers[backend] = TiledUpscaler(runner, loaded.scale)
            for x in [*inputs[:2], *pairs[:2]]:  # warm-up (compiles the compiled path, both batch sizes)
                upscalers[backend](x)
        nearest = TiledUpscaler(lambda x: x.repeat_interleave(4, 2).repeat_interleave(4, 3), loaded.scale)
        keys = ("network", "pipeline", "pairs", "network_cpu", "pipeline_cpu")
        times: dict[str, dict[str, list[float]]] = {n: {k: [] for k in keys} for n in upscalers}
        io_only: list[float] = []
        for round_ in range(args.rounds):
            for name, upscaler in upscalers.items():
                row = times[name]
                batch = batch_size(device, upscaler, SIZE, 2 << 30)
                wall, cpu = network_seconds(upscaler, inputs, device)
                row["network"].append(wall)
                row["network_cpu"].append(cpu)
                row["pairs"].append(network_seconds(upscaler, pairs, device)[0] * len(inputs) / (2 * len(pairs)))
                seconds, cpu, frames = pipeline_seconds(job, upscaler, device, batch)
                assert frames == len(inputs), (frames, len(inputs))
                row["pipeline"].append(seconds)
                row["pipeline_cpu"].append(cpu)
                print(
                    f"round {round_ + 1} {name}: network {len(inputs) / row['network'][-1]:.2f} frames/s "
                    f"({len(inputs) / row['pairs'][-1]:.2f} in pairs), pipeline {frames / seconds:.2f} frames/s",
                    file=sys.stderr,
                )
            io_only.append(pipeline_seconds(io_job, nearest, device, 1)[0])
        last = list(upscalers.values())[-1]  # dst holds its output, encoded with the default encoder
        with torch.inference_mode():
            network_out = [to_uint8(to_array(last(x))) for x in inputs]
        fidelity = statistics.mean(psnr(a, b) for a, b in zip(rgb_frames(dst), network_out, strict=True))
        presets = encoder_presets(network_out, work)
        output_kib = dst.stat().st_size / len(inputs) / 1024
    n = len(inputs)
    results: dict = {
        "cpu": cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "precision": "fp16" if cuda else "fp32",
        "torch": torch.__version__,
        "pyav": av.__version__,
        "weights": loaded.label,
        "clip": {"frames": n, "lr": "480x270", "hr": "1920x1080", "rate": 25, "pictures": source},
        "encoder": encoding.describe(),
        "rounds": args.rounds,
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "note": "a shared machine under load (see load_average_1min): medians over rounds; each round times the "
        "network alone, the network on pairs of frames, then the pipeline, on the same back-end; the CPU-time "
        "ratio (this process's CPU seconds) is less sensitive to other jobs than the wall-clock one",
        "backends": {},
    }
    for name, row in times.items():
        ratios = [p / q for p, q in zip(row["pipeline"], row["network"], strict=True)]
        cpu_ratios = [p / q for p, q in zip(row["pipeline_cpu"], row["network_cpu"], strict=True)]
        pair_ratios = [p / q for p, q in zip(row["pairs"], row["network"], strict=True)]
        results["backends"][name] = {
            "network_frames_per_s": n / statistics.median(row["network"]),
            "network_ms_per_frame": statistics.median(row["network"]) / n * 1e3,
            "pipeline_frames_per_s": n / statistics.median(row["pipeline"]),
            "pipeline_over_network": statistics.median(ratios),
            "pipeline_over_network_rounds": ratios,
            "pipeline_over_network_cpu_time": statistics.median(cpu_ratios),
            "batch2_over_batch1_time": statistics.median(pair_ratios),
        }
    results["decode_convert_encode_only_frames_per_s"] = n / statistics.median(io_only)
    results["output_psnr_rgb_db_vs_network"] = fidelity
    results["output_kib_per_frame"] = output_kib
    results["libx264_crf18_presets"] = presets
    print(f"{results['cpu']}, {results['cpu_threads']} threads; {n} frames 480x270 -> 1920x1080, {results['encoder']}")
    print(f"{'back-end':<16}{'network f/s':>12}{'pipeline f/s':>14}{'ratio':>8}{'CPU ratio':>11}{'batch 2 / 1':>13}")
    for name, row in results["backends"].items():
        print(
            f"{name:<16}{row['network_frames_per_s']:>12.2f}{row['pipeline_frames_per_s']:>14.2f}"
            f"{row['pipeline_over_network']:>7.2f}x{row['pipeline_over_network_cpu_time']:>10.2f}x"
            f"{row['batch2_over_batch1_time']:>12.2f}x"
        )
    print(f"decode + convert + encode alone: {results['decode_convert_encode_only_frames_per_s']:.1f} frames/s")
    print(f"encoded output vs the network's frames: {fidelity:.2f} dB RGB PSNR, {output_kib:.0f} KiB/frame")
    for preset, row in presets.items():
        print(
            f"libx264 CRF 18 {preset:<9} {row['cpu_ms_per_frame']:6.1f} ms CPU/frame, {row['kib_per_frame']:6.1f} "
            f"KiB/frame, {row['psnr_rgb_db_vs_frames']:.2f} dB"
        )
    with atomic_write(args.json) as tmp:
        tmp.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
