"""Inference speed of every back-end, side by side in one run, against the eager reference and the machine's
compute bound; the PSNR cost of each reduced precision; peak memory of a tiled 960x540 -> 3840x2160 upscale.

- latency: median over ``--runs`` rounds after warm-up, for a 1x3x256x256 input (the NTIRE setting) and for
  a 480x270 input (a 1920x1080 output). Each round times every path once, in turn, and a GEMM, so the
  machine's drift (a shared VM here: 10-30 % over minutes) hits all of them alike;
- ratio to reference: median over rounds of back-end latency / eager NCHW fp32 latency of the same round;
- ratio to bound: median over rounds of latency / (2 · MACs / GEMM rate of the same round). The GEMM rate is
  the best sustained fp32 rate torch reaches here: square sizes 512-4096 are tried first (each product
  repeated for 0.2 s, three passes) and the fastest size is the one timed each round;
- precision cost: mean Y-PSNR change vs fp32 on Set5 and the first ``--b100`` images of B100 (x4);
- tiled 4K: peak RSS of a fresh process upscaling 960x540 x4 with ``--tile`` (and its max difference to
  the untiled output);
- tiling cost: time of a tiled 600x400 upscale (tiles of 128 and 64, the model's receptive radius as overlap)
  over the untiled time for each eager path, beside the share the overlap alone explains (pixels computed in
  all windows / pixels of the image).

``--device cuda`` runs the same on a GPU: fp32 (IEEE convs, no TF32) and fp16 paths, compile with CUDA graphs,
every timing synchronised, plus the network zero-padded to 32 channels (``models/span/padding.py``, exact) in
fp16 channels_last and compiled; instead of the tiled-RSS figure it records the GPU's peak allocation for an
untiled 960x540 -> 4K upscale, and it adds the NTIRE-style runtime of every path (CUDA events around each
forward, mean over ``--ntire-images`` inputs of a DIV2K-valid LR size, 510x339, as the NTIRE 2025 ESR kit
measures it; the published DSCLoRA figure, 8.37 ms, is from an RTX A6000) and its ratio to eager fp32.

    python benchmarks/infer.py [--weights dscf] [--runs 11] [--device cpu|cuda] [--json FILE]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dsclora.data.benchmark import find_pairs, load_pair
from dsclora.data.images import to_array, to_tensor, to_uint8
from dsclora.devices import device_name
from dsclora.fs import atomic_write
from dsclora.measure.metrics import psnr_y
from dsclora.measure.profiling import conv_statistics, peak_memory
from dsclora.runtime.backends import make_runner
from dsclora.runtime.tiling import TiledUpscaler, tile_windows
from dsclora.weights.load import load

SHARED = Path(__file__).resolve().parents[2] / "shared"
DEVICE = torch.device("cpu")  # set by main(); timings synchronise when it is a GPU
CPU_GEMM_SIZES = (512, 1024, 1536, 2048, 3072, 4096)
SUSTAIN_S = 0.2  # each GEMM rate is measured over at least this long
CUDA_PATHS = [  # (backend, precision, pad)
    ("torch", "fp32", 0),
    ("channels_last", "fp32", 0),
    ("compile", "fp32", 0),
    ("torch", "fp16", 0),
    ("channels_last", "fp16", 0),
    ("compile", "fp16", 0),
    ("channels_last", "fp16", 32),
    ("compile", "fp16", 32),
    ("compile", "bf16", 32),
]
PATHS = [
    ("torch", "fp32", 0),
    ("channels_last", "fp32", 0),
    ("compile", "fp32", 0),
    ("onnxruntime", "fp32", 0),
    ("channels_last", "bf16", 0),
    ("channels_last", "bf16-accurate", 0),
    ("compile", "bf16", 0),
    ("compile", "bf16-accurate", 0),
]
TILED_SIZE = (400, 600)  # LR height, width of the tiling-cost measurement


def path_name(backend: str, precision: str, pad: int) -> str:
    return f"{backend}/{precision}" + (f"/pad{pad}" if pad else "")


class Gemm:
    """Matrix products (fp32 by default) at the size where torch is fastest on this machine.

    Each measurement repeats the product for at least ``SUSTAIN_S`` seconds (a sustained rate, not one burst);
    the size is the one with the best median over three interleaved passes over ``sizes`` (small sizes that
    stay in cache are often the fastest on a CPU, so they are included: the bound is the strictest one).
    """

    def __init__(self, sizes: tuple[int, ...] = CPU_GEMM_SIZES, dtype: torch.dtype = torch.float32) -> None:
        self.dtype = dtype
        self.operands: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        passes: dict[int, list[float]] = {n: [] for n in sizes}
        for _ in range(3):
            for n in sizes:
                passes[n].append(self._rate(n))
        self.size = max(sizes, key=lambda n: statistics.median(passes[n]))
        self.operands = {self.size: self.operands[self.size]}

    def _rate(self, size: int) -> float:
        if size not in self.operands:
            a = torch.rand(size, size, device=DEVICE, dtype=self.dtype)
            self.operands[size] = (a, torch.rand(size, size, device=DEVICE, dtype=self.dtype))
        a, b = self.operands[size]
        once = _time(torch.matmul, a, b)
        repeats = max(1, round(SUSTAIN_S / max(once, 1e-6)))
        return 2 * size**3 * repeats / _time(_repeat, torch.matmul, repeats, a, b)

    def rate(self) -> float:
        """FLOP/s now, at the chosen size."""
        return self._rate(self.size)


def _repeat(fn, times: int, *args) -> None:
    for _ in range(times):
        fn(*args)


def _time(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved(runners: dict, x: torch.Tensor, gemm: Gemm, rounds: int) -> tuple[dict[str, list[float]], list[float]]:
    """Per-round latencies of every runner and the GEMM rate of each round (all timed in turn)."""
    for runner in runners.values():
        for _ in range(3):  # compiled paths specialise on the first shapes they see
            runner(x)
    times: dict[str, list[float]] = {name: [] for name in runners}
    rates = []
    for _ in range(rounds):
        rates.append(gemm.rate())
        for name, runner in runners.items():
            times[name].append(_time(runner, x))
    return times, rates


def psnr_change(runner, reference, sets: dict[str, int]) -> dict[str, float]:
    out = {}
    for name, limit in sets.items():
        deltas = []
        for pair in find_pairs(SHARED / "data" / "benchmark" / name, 4)[:limit]:
            hr, lr = load_pair(pair, 4)
            x = to_tensor(lr).to(DEVICE)
            got = to_uint8(to_array(runner(x)))
            want = to_uint8(to_array(reference(x)))
            deltas.append(psnr_y(got, hr, 4) - psnr_y(want, hr, 4))
        out[name] = float(np.mean(deltas))
    return out


def _conv_ignoring_input(x: torch.Tensor, w: torch.Tensor, _input: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.conv2d(x, w, padding=1)


def conv_width_floor(channels: int, gemm: Gemm, rounds: int, size: int = 256) -> dict[str, float]:
    """One NHWC 3x3 conv, ``channels`` -> ``channels``, and one of the next multiple of 16, against the bound.

    oneDNN vectorises output channels 16 at a time, so a 26-wide conv pays for 32 lanes: this is the floor
    under any whole-network ratio to the bound for the exact (fp32) paths.
    """
    widths = {str(channels): channels, str(-(-channels // 16) * 16): -(-channels // 16) * 16}
    convs = {}
    for name, c in widths.items():
        x = torch.rand(1, c, size, size, device=DEVICE).contiguous(memory_format=torch.channels_last)
        w = torch.rand(c, c, 3, 3, device=DEVICE).contiguous(memory_format=torch.channels_last)
        convs[name] = functools.partial(_conv_ignoring_input, x, w)
    with torch.inference_mode():
        times, rates = interleaved(convs, torch.empty(0), gemm, rounds)
    return {
        f"C{name}": statistics.median(
            t / (2 * c * c * 9 * size * size / r) for t, r in zip(times[name], rates, strict=True)
        )
        for name, c in widths.items()
    }


def ntire_runtime_ms(runner, images: int, size: tuple[int, int] = (339, 510)) -> float:
    """Mean of CUDA-event times around single forwards, as the NTIRE ESR kit measures (after a warm-up)."""
    x = torch.nn.functional.avg_pool2d(torch.rand(1, 3, *size, device=DEVICE), 9, 1, 4)
    for _ in range(5):
        runner(x)
    times = []
    for _ in range(images):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        runner(x)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.fmean(times)


def cuda_peak_untiled_4k_mib(runner) -> float:
    x = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 540, 960, device=DEVICE), 9, 1, 4)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    runner(x)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def tiling_cost(runners: dict, radius: int, rounds: int) -> dict[str, dict[str, float]]:
    """Tiled over untiled time of a 600x400 upscale per eager path, and what the overlap alone explains."""
    x = torch.nn.functional.avg_pool2d(torch.rand(1, 3, *TILED_SIZE, device=DEVICE), 9, 1, 4)
    out: dict[str, dict[str, float]] = {}
    for tile in (128, 64):
        computed = 1
        for size in TILED_SIZE:
            span = min(tile + 2 * radius, size)
            computed *= len(tile_windows(size, tile, radius)) * span
        explained = computed / (TILED_SIZE[0] * TILED_SIZE[1])
        for name, runner in runners.items():
            whole, tiled = TiledUpscaler(runner, 4), TiledUpscaler(runner, 4, tile, radius)
            whole(x), tiled(x)  # warm-up: every window shape seen once
            times = {"whole": [], "tiled": []}
            for _ in range(rounds):
                times["whole"].append(_time(whole, x))
                times["tiled"].append(_time(tiled, x))
            row = out.setdefault(name, {})
            row[f"tile{tile}"] = statistics.median(t / w for t, w in zip(times["tiled"], times["whole"], strict=True))
            row[f"tile{tile}_overlap_explains"] = explained
    return out


def tiled_4k_child(weights: str, tile: int) -> None:
    """Child mode: upscale a 960x540 image tiled; print peak RSS (MiB) and the max diff to untiled."""
    model = load(weights)
    runner = make_runner(model, "channels_last", torch.device("cpu"))
    x = torch.rand(1, 3, 540, 960)
    x = torch.nn.functional.avg_pool2d(x, 9, 1, 4)  # smooth like an image, not noise
    out = TiledUpscaler(runner, 4, tile, model.receptive_radius)(x)
    peak = peak_memory(torch.device("cpu")) / 2**20
    untiled = runner(x)
    print(
        json.dumps(
            {
                "peak_rss_mib": peak,
                "max_abs_diff_vs_untiled": (out - untiled).abs().max().item(),
                "output": list(out.shape),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="dscf", help="weights name or file (default dscf)")
    parser.add_argument("--runs", type=int, default=11, help="timing rounds, every path and a GEMM each (default 11)")
    parser.add_argument("--b100", type=int, default=30, help="B100 images for the precision cost (default 30)")
    parser.add_argument("--tile", type=int, default=256, help="tile of the tiled 4K memory figure (default 256)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run (default cpu)")
    parser.add_argument("--ntire-images", type=int, default=50, help="forwards averaged for the NTIRE runtime (GPU)")
    parser.add_argument("--json", help="output file (default benchmarks/results/infer.json, infer_cuda.json on a GPU)")
    parser.add_argument("--tiled-4k-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("DSCLORA_WEIGHTS_DIR", str(SHARED / "weights"))
    if args.tiled_4k_child:
        tiled_4k_child(args.weights, args.tile)
        return
    global DEVICE
    DEVICE = torch.device(args.device)
    cuda = DEVICE.type == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("infer.py: --device cuda but no CUDA device is available")
    args.json = args.json or f"benchmarks/results/infer{'_cuda' if cuda else ''}.json"

    model = load(args.weights, DEVICE)
    macs = {
        k: conv_statistics(model.module, shape)["macs"]
        for k, shape in {"256x256": (1, 3, 256, 256), "1920x1080_out": (1, 3, 270, 480)}.items()
    }
    torch.backends.cuda.matmul.fp32_precision = "ieee"  # the bound is a true fp32 GEMM, never TF32
    gemm = Gemm(sizes=(2048, 4096, 8192) if cuda else CPU_GEMM_SIZES)
    inputs = {
        "256x256": torch.rand(1, 3, 256, 256, device=DEVICE),
        "1920x1080_out": torch.rand(1, 3, 270, 480, device=DEVICE),
    }
    runners = {
        path_name(b, p, pad): make_runner(model, b, DEVICE, p, pad) for b, p, pad in (CUDA_PATHS if cuda else PATHS)
    }
    results: dict = {
        "machine": device_name(DEVICE),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gemm_size": gemm.size,
        "rounds": args.runs,
        "paths": {},
    }
    all_rates = []
    for label, x in inputs.items():
        times, rates = interleaved(runners, x, gemm, args.runs)
        all_rates += rates
        bounds = [2 * macs[label] / r for r in rates]
        ref = times["torch/fp32"]
        for name, t in times.items():
            row = results["paths"].setdefault(name, {})
            row[label] = {
                "latency_ms": statistics.median(t) * 1e3,
                "speedup_vs_reference": statistics.median(r / v for r, v in zip(ref, t, strict=True)),
                "ratio_to_bound": statistics.median(v / b for v, b in zip(t, bounds, strict=True)),
            }
        results.setdefault("bound_ms", {})[label] = statistics.median(bounds) * 1e3
    rate = statistics.median(all_rates)
    results["gemm_gflops"] = rate / 1e9
    results["single_conv_ratio_to_bound"] = conv_width_floor(model.module.config.channels, gemm, args.runs)
    reference = runners["torch/fp32"]
    # every benchmark image has its own size: let the compiled paths compile each (past dynamo's default
    # limit of 8 shapes they would quietly fall back to eager and measure another path's arithmetic)
    with torch._dynamo.config.patch(recompile_limit=64):
        for name in [n for n in runners if not n.endswith("fp32")]:
            results["paths"][name]["psnr_y_change_db"] = psnr_change(
                runners[name], reference, {"Set5": 5, "B100": args.b100}
            )
    if cuda:
        results["gemm_fp16_tflops"] = Gemm(sizes=(4096, 8192), dtype=torch.float16).rate() / 1e12
        results["cuda_peak_untiled_960x540_to_4k_mib"] = cuda_peak_untiled_4k_mib(runners["torch/fp32"])
        results["ntire_runtime_ms"] = {name: ntire_runtime_ms(runners[name], args.ntire_images) for name in runners}
        ref_ms = results["ntire_runtime_ms"]["torch/fp32"]
        results["ntire_speedup_vs_eager_fp32"] = {k: ref_ms / v for k, v in results["ntire_runtime_ms"].items()}
        results["ntire_runtime_published_ms"] = {"value": 8.37, "gpu": "RTX A6000 (NTIRE 2025 ESR report)"}
    else:
        child = subprocess.run(
            [sys.executable, __file__, "--tiled-4k-child", "--weights", args.weights, "--tile", str(args.tile)],
            capture_output=True,
            text=True,
            check=True,
        )
        results["tiled_960x540_to_4k"] = {"tile": args.tile, **json.loads(child.stdout.strip().splitlines()[-1])}
    eager = {n: r for n, r in runners.items() if n.split("/")[0] in ("torch", "channels_last", "onnxruntime")}
    eager = {n: r for n, r in eager.items() if n.split("/")[1] == "fp32"}
    results["tiled_vs_untiled_600x400"] = tiling_cost(eager, model.receptive_radius, max(3, args.runs // 3))

    print(
        f"GEMM {rate / 1e9:.0f} GFLOP/s (median of rounds, {gemm.size}^2), {torch.get_num_threads()} threads; bound "
        + ", ".join(f"{k} {v:.1f} ms" for k, v in results["bound_ms"].items())
    )
    print(
        f"{'path':<30}{'256² ms':>9}{'x ref':>7}{'/bound':>8}{'1080p ms':>10}{'x ref':>7}{'/bound':>8}  PSNR-Y change"
    )
    for name, row in results["paths"].items():
        a, b = row["256x256"], row["1920x1080_out"]
        change = row.get("psnr_y_change_db")
        note = ", ".join(f"{k} {v:+.4f} dB" for k, v in change.items()) if change else "exact (fp32)"
        print(
            f"{name:<30}{a['latency_ms']:>9.1f}{a['speedup_vs_reference']:>7.2f}{a['ratio_to_bound']:>8.2f}"
            f"{b['latency_ms']:>10.1f}{b['speedup_vs_reference']:>7.2f}{b['ratio_to_bound']:>8.2f}  {note}"
        )
    print(
        "one 3x3 NHWC conv at 256x256 vs its bound: "
        + ", ".join(f"{k} {v:.2f}x" for k, v in results["single_conv_ratio_to_bound"].items())
    )
    if cuda:
        print(
            "NTIRE-style runtime (CUDA events, mean of "
            f"{args.ntire_images} forwards at 510x339; published: 8.37 ms on an RTX A6000):\n  "
            + "\n  ".join(
                f"{k:<24} {v:.2f} ms  {results['ntire_speedup_vs_eager_fp32'][k]:.2f}x eager fp32"
                for k, v in results["ntire_runtime_ms"].items()
            )
        )
        print(f"untiled 960x540 -> 4K: peak GPU allocation {results['cuda_peak_untiled_960x540_to_4k_mib']:.0f} MiB")
    else:
        t4k = results["tiled_960x540_to_4k"]
        print(
            f"tiled 960x540 -> 3840x2160 (tile {args.tile}): peak RSS {t4k['peak_rss_mib']:.0f} MiB, "
            f"max |tiled - untiled| {t4k['max_abs_diff_vs_untiled']:.1e}"
        )
    for name, row in results["tiled_vs_untiled_600x400"].items():
        print(
            f"tiled / untiled 600x400, {name}: tile 128 {row['tile128']:.2f}x (overlap explains "
            f"{row['tile128_overlap_explains']:.2f}x), tile 64 {row['tile64']:.2f}x "
            f"(overlap explains {row['tile64_overlap_explains']:.2f}x)"
        )
    with atomic_write(args.json) as tmp:
        tmp.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
