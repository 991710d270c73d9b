"""Inference speed of every back-end, side by side in one run, against the eager reference and the machine's
compute bound; the PSNR cost of each reduced precision; peak memory of a tiled 960x540 -> 3840x2160 upscale.

- latency: median of ``--runs`` forwards after warm-up, for a 1x3x256x256 input (the NTIRE setting) and for
  a 480x270 input (a 1920x1080 output);
- ratio to reference: back-end latency / eager NCHW fp32 latency (same run);
- ratio to bound: latency / (2 · MACs / best sustained fp32 GEMM rate torch reaches here, measured now);
- precision cost: mean Y-PSNR change vs fp32 on Set5 and the first ``--b100`` images of B100 (x4);
- tiled 4K: peak RSS of a fresh process upscaling 960x540 x4 with ``--tile`` (and its max difference to
  the untiled output).

    python benchmarks/infer.py [--weights dscf] [--runs 7] [--json benchmarks/results/infer.json]
"""

from __future__ import annotations

import argparse
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


def gemm_rate(size: int = 2048, repeats: int = 10) -> float:
    """Best sustained fp32 GEMM FLOP/s torch reaches on this machine (largest of ``repeats`` timings)."""
    a, b = torch.rand(size, size), torch.rand(size, size)
    a @ b
    best = min(_time(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def latency(runner, x: torch.Tensor, runs: int) -> float:
    for _ in range(3):  # compiled paths specialise on the first shapes they see
        runner(x)
    return statistics.median(_time(lambda: runner(x)) for _ in range(runs))


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
    parser.add_argument("--runs", type=int, default=7)
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
    rate = gemm_rate()
    inputs = {"256x256": torch.rand(1, 3, 256, 256), "1920x1080_out": torch.rand(1, 3, 270, 480)}
    macs = {k: conv_statistics(model, tuple(v.shape))["macs"] for k, v in inputs.items()}
    runners = {f"{b}/{p}": make_runner(model, b, device, p)[0] for b, p in PATHS}
    results: dict = {
        "machine": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gemm_gflops": rate / 1e9,
        "paths": {},
    }
    for label, x in inputs.items():
        bound = 2 * macs[label] / rate
        times = {name: latency(r, x, args.runs) for name, r in runners.items()}
        ref = times["torch/fp32"]
        for name, t in times.items():
            row = results["paths"].setdefault(name, {})
            row[label] = {"latency_ms": t * 1e3, "speedup_vs_reference": ref / t, "ratio_to_bound": t / bound}
        results.setdefault("bound_ms", {})[label] = bound * 1e3
    reference = runners["torch/fp32"]
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
        f"GEMM {rate / 1e9:.0f} GFLOP/s, {torch.get_num_threads()} threads; bound "
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
    t4k = results["tiled_960x540_to_4k"]
    print(
        f"tiled 960x540 -> 3840x2160 (tile {args.tile}): peak RSS {t4k['peak_rss_mib']:.0f} MiB, "
        f"max |tiled - untiled| {t4k['max_abs_diff_vs_untiled']:.1e}"
    )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
