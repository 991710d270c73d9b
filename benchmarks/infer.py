"""Inference speed of every back-end, side by side in one run, against the eager reference and the machine's
compute bound; the PSNR cost of each reduced precision; peak memory of a tiled 960x540 -> 3840x2160 upscale.

- latency: median over ``--runs`` rounds after warm-up, for a 1x3x256x256 input (the NTIRE setting) and for
  a 480x270 input (a 1920x1080 output). Each round times every path once, in turn, and a GEMM, so the
  machine's drift (a shared VM here: 10-30 % over minutes) hits all of them alike;
- ratio to reference: median over rounds of back-end latency / eager NCHW fp32 latency of the same round;
- ratio to bound: median over rounds of latency / (2 · MACs / GEMM rate of the same round). The GEMM rate is
  the best fp32 rate torch reaches here: square sizes 512-4096 are tried first and the fastest size is the one
  timed each round (best of three products);
- precision cost: mean Y-PSNR change vs fp32 on Set5 and the first ``--b100`` images of B100 (x4);
- tiled 4K: peak RSS of a fresh process upscaling 960x540 x4 with ``--tile`` (and its max difference to
  the untiled output).

    python benchmarks/infer.py [--weights dscf] [--runs 7] [--json benchmarks/results/infer.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dsclora.backends import make_runner
from dsclora.checkpoints import load_model
from dsclora.data.benchmark import find_pairs, load_pair
from dsclora.data.io import to_uint8
from dsclora.inference import tiled_forward
from dsclora.metrics import psnr_y
from dsclora.profiling import conv_statistics, rss_kib
from dsclora.weights import resolve

SHARED = Path(__file__).resolve().parents[2] / "shared"
PATHS = [
    ("torch", "fp32"),
    ("channels_last", "fp32"),
    ("compile", "fp32"),
    ("onnxruntime", "fp32"),
    ("channels_last", "bf16"),
    ("channels_last", "bf16-accurate"),
    ("compile", "bf16"),
    ("compile", "bf16-accurate"),
]


class Gemm:
    """fp32 matrix products at the size where torch is fastest on this machine."""

    def __init__(self, sizes: tuple[int, ...] = (512, 1024, 1536, 2048, 3072, 4096)) -> None:
        self.size = max(sizes, key=lambda n: self._rate(n, repeats=5))

    @staticmethod
    def _rate(size: int, repeats: int) -> float:
        a, b = torch.rand(size, size), torch.rand(size, size)
        a @ b
        return 2 * size**3 / min(_time(lambda: a @ b) for _ in range(repeats))

    def rate(self) -> float:
        """FLOP/s now: the best of three products at the chosen size."""
        return self._rate(self.size, repeats=3)


def _time(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
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


def psnr_change(model, runner, reference, sets: dict[str, int]) -> dict[str, float]:
    out = {}
    for name, limit in sets.items():
        deltas = []
        for pair in find_pairs(SHARED / "data" / "benchmark" / name, 4)[:limit]:
            hr, lr = load_pair(pair, 4)
            x = torch.from_numpy(lr.transpose(2, 0, 1).astype(np.float32) / 255)[None]
            got = to_uint8(runner(x)[0].permute(1, 2, 0).numpy())
            want = to_uint8(reference(x)[0].permute(1, 2, 0).numpy())
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
        x = torch.rand(1, c, size, size).contiguous(memory_format=torch.channels_last)
        w = torch.rand(c, c, 3, 3).contiguous(memory_format=torch.channels_last)
        convs[name] = functools.partial(_conv_ignoring_input, x, w)
    with torch.inference_mode():
        times, rates = interleaved(convs, torch.empty(0), gemm, rounds)
    return {
        f"C{name}": statistics.median(
            t / (2 * c * c * 9 * size * size / r) for t, r in zip(times[name], rates, strict=True)
        )
        for name, c in widths.items()
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def tiled_4k_child(weights: str, tile: int) -> None:
    """Child mode: upscale a 960x540 image tiled; print peak RSS (MiB) and the max diff to untiled."""
    model, _ = load_model(resolve(weights))
    runner, _ = make_runner(model, "channels_last", torch.device("cpu"))
    x = torch.rand(1, 3, 540, 960)
    x = torch.nn.functional.avg_pool2d(x, 9, 1, 4)  # smooth like an image, not noise
    out = tiled_forward(runner, x, 4, tile=tile, overlap=model.config.receptive_radius)
    peak = (rss_kib("VmHWM") or 0) / 1024
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="dscf")
    parser.add_argument("--runs", type=int, default=11, help="timing rounds (every path and a GEMM each round)")
    parser.add_argument("--b100", type=int, default=30, help="B100 images for the precision cost")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--json", default="benchmarks/results/infer.json")
    parser.add_argument("--tiled-4k-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("DSCLORA_WEIGHTS_DIR", str(SHARED / "weights"))
    if args.tiled_4k_child:
        tiled_4k_child(args.weights, args.tile)
        return

    model, _ = load_model(resolve(args.weights))
    device = torch.device("cpu")
    gemm = Gemm()
    inputs = {"256x256": torch.rand(1, 3, 256, 256), "1920x1080_out": torch.rand(1, 3, 270, 480)}
    macs = {k: conv_statistics(model, tuple(v.shape))["macs"] for k, v in inputs.items()}
    runners = {f"{b}/{p}": make_runner(model, b, device, p)[0] for b, p in PATHS}
    results: dict = {
        "machine": _cpu_name(),
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
    results["single_conv_ratio_to_bound"] = conv_width_floor(model.config.channels, gemm, args.runs)
    reference = runners["torch/fp32"]
    # every benchmark image has its own size: let the compiled paths compile each (past dynamo's default
    # limit of 8 shapes they would quietly fall back to eager and measure another path's arithmetic)
    with torch._dynamo.config.patch(recompile_limit=64):
        for name in [n for n in runners if not n.endswith("fp32")]:
            results["paths"][name]["psnr_y_change_db"] = psnr_change(
                model, runners[name], reference, {"Set5": 5, "B100": args.b100}
            )
    child = subprocess.run(
        [sys.executable, __file__, "--tiled-4k-child", "--weights", args.weights, "--tile", str(args.tile)],
        capture_output=True,
        text=True,
        check=True,
    )
    results["tiled_960x540_to_4k"] = {"tile": args.tile, **json.loads(child.stdout.strip().splitlines()[-1])}

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
    t4k = results["tiled_960x540_to_4k"]
    print(
        f"tiled 960x540 -> 3840x2160 (tile {args.tile}): peak RSS {t4k['peak_rss_mib']:.0f} MiB, "
        f"max |tiled - untiled| {t4k['max_abs_diff_vs_untiled']:.1e}"
    )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
