"""Inference speed of every back-end and precision, side by side in one run, against the eager reference, the
fastest fp32 path and the machine's compute bound; the accuracy cost of each reduced precision; ``dsclora
upscale`` end to end with and without ``--precision auto``; peak memory of a tiled 960x540 -> 3840x2160 upscale.
Every figure the README's speed section cites comes from this one command.

- latency: median over ``--runs`` rounds after warm-up, for 1x3x256x256 (the NTIRE setting), 480x270 (a 1920x1080
  output) and 960x540 (a 3840x2160 output) inputs. Each round times every path once, in turn, and a GEMM, so the
  machine's drift (a shared VM here: 10-30 % over minutes) hits all of them alike; the load average before and
  after each size is recorded (other work on the machine slows memory-bound paths most);
- ratio to reference: median over rounds of eager NCHW fp32 latency / path latency of the same round; ratio to
  own fp32: the same against the fp32 path of the same back-end (what a precision alone is worth); ratio to the
  fastest fp32 path: against the fastest fp32 path of that round (what ``auto`` compares);
- candidates: ablations of ``bf16-accurate`` (BF16SPAN), each undoing one of its remedies (nearest-rounded
  weights; c3's bias rounded with its output; a bf16 residual stream; the fp32 element-wise passes over whole
  tensors instead of cache-sized row bands), and the generic policy (``torch`` back-end);
- minor page faults per forward (median over rounds): with glibc's default thresholds each forward faults its
  feature maps in again; like ``dsclora``, this script raises them first (``devices.keep_freed_memory``;
  ``--malloc-defaults`` measures without);
- ratio to bound: median over rounds of latency / (2 · MACs / GEMM rate of the same round). The GEMM rate is
  the best sustained fp32 rate torch reaches here: square sizes 512-4096 are tried first (each product
  repeated for 0.2 s, three passes) and the fastest size is the one timed each round;
- precision cost: mean Y-PSNR change vs eager fp32 on Set5 and the first ``--b100`` images of B100 (x4; compiled
  paths compile every image size, so they take the first ``--b100-compiled``), the largest value change (outputs
  clamped to [0, 1]), and the check ``--precision auto`` makes on the package's reference images;
- end to end: wall time of ``dsclora upscale`` (fresh processes) on a 1443x963 photo (a 3x3 mosaic of BSD200
  images) with no precision flag and with ``--precision fp32``, alternated ``--e2e-rounds`` times after one
  run of each that fills auto's cache (its time is recorded too), and what each run printed;
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

    python benchmarks/infer.py [--weights default] [--runs 11] [--device cpu|cuda] [--json FILE]

``--paths`` times only the paths named (with the eager fp32 reference and each one's own back-end in fp32) and
measures their accuracy, nothing else: more rounds for one question in a few minutes.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dsclora.data.benchmark import find_pairs, load_pair
from dsclora.data.images import to_array, to_tensor, to_uint8
from dsclora.devices import device_name, keep_freed_memory
from dsclora.fs import atomic_write
from dsclora.measure.metrics import psnr_y
from dsclora.measure.profiling import conv_statistics, peak_memory
from dsclora.models.span import BF16SPAN, FusedSPAN
from dsclora.runtime.backends import make_runner
from dsclora.runtime.reference import accuracy
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
    ("torch", "bf16-accurate", 0),  # the generic policy (autocast, fp32 islands), on the unfused SPAN
    ("compile", "bf16", 0),
    ("compile", "bf16-accurate", 0),
]
SIZES = {"256x256": (256, 256), "480x270": (270, 480), "960x540": (540, 960)}  # LR width x height: (h, w)
TILED_SIZE = (400, 600)  # LR height, width of the tiling-cost measurement
E2E_GRID = (3, 3)  # BSD200 images (481x321 or 321x481) per column / row of the end-to-end photo


def path_name(backend: str, precision: str, pad: int) -> str:
    return f"{backend}/{precision}" + (f"/pad{pad}" if pad else "")


def own_fp32(name: str) -> str:
    """The fp32 path of a path's own back-end (the candidates run eager channels_last)."""
    backend = name.split("/")[0]
    return f"{'channels_last' if backend == 'candidate' else backend}/fp32"


def _eager_channels_last(module: torch.nn.Module):
    @torch.inference_mode()
    def run(x: torch.Tensor) -> torch.Tensor:
        return module(x.contiguous(memory_format=torch.channels_last))

    return run


def candidates(model) -> dict:
    """Ablations of BF16SPAN (eager, channels_last), each undoing one remedy, to show what it is worth."""
    fused = FusedSPAN.from_span(model.module)
    pairs = {  # BF16SPAN's bf16 convs -> the FusedSPAN convs they come from
        **{
            f"blocks.{i}.c{k}": b.get_submodule(f"c{k}_r.eval_conv")
            for i, b in enumerate(fused.blocks)
            for k in (1, 2, 3)
        },
        **{name: getattr(fused, name) for name in ("first_block_proj", "act_proj", "tail_proj")},
    }
    nearest = BF16SPAN(fused)
    for name, conv in pairs.items():
        target = nearest.get_submodule(name)
        target.weight = conv.weight.detach().to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    bias_inside = BF16SPAN(fused)
    for block in bias_inside.blocks:
        block.c3.bias, block.c3_bias = block.c3_bias.flatten().clone(), torch.zeros_like(block.c3_bias)
    stream = BF16SPAN(fused)
    base = type(stream.blocks[0])

    class BF16Stream(base):
        def forward(self, low, residual):
            h1 = self.c1(low, silu=True)
            h3 = torch.add(self.c3(self.c2(h1, silu=True)), self.c3_bias).to(low.dtype)
            out = (h3 + low) * (torch.sigmoid(h3) - 0.5)
            return out, out, h1

    for block in stream.blocks:
        block.__class__ = BF16Stream
    whole = BF16SPAN(fused)

    class WholeTensors(base):
        def forward(self, low, residual):
            h1 = self.c1(low, silu=True)
            h3 = torch.add(self.c3(self.c2(h1, silu=True)), self.c3_bias)
            gate = torch.sigmoid(h3).sub_(0.5)
            out = h3.add_(residual).mul_(gate)
            return out, out.to(low.dtype), h1

    for block in whole.blocks:
        block.__class__ = WholeTensors
    return {
        "candidate/bf16-accurate, nearest-rounded weights": _eager_channels_last(nearest.eval()),
        "candidate/bf16-accurate, c3 bias rounded with its output": _eager_channels_last(bias_inside.eval()),
        "candidate/bf16-accurate, bf16 residual stream and gate": _eager_channels_last(stream.eval()),
        "candidate/bf16-accurate, whole-tensor element-wise passes": _eager_channels_last(whole.eval()),
    }


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


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def interleaved(
    runners: dict, x: torch.Tensor, gemm: Gemm, rounds: int
) -> tuple[dict[str, list[float]], list[float], dict[str, list[int]]]:
    """Per-round latencies of every runner, the GEMM rate of each round (all timed in turn) and each runner's
    minor page faults per forward."""
    for runner in runners.values():
        for _ in range(3):  # compiled paths specialise on the first shapes they see
            runner(x)
    times: dict[str, list[float]] = {name: [] for name in runners}
    faults: dict[str, list[int]] = {name: [] for name in runners}
    rates = []
    for _ in range(rounds):
        rates.append(gemm.rate())
        for name, runner in runners.items():
            before = _minor_faults()
            times[name].append(_time(runner, x))
            faults[name].append(_minor_faults() - before)
    return times, rates, faults


def psnr_change(runner, reference, sets: dict[str, int]) -> dict[str, float]:
    """Mean Y-PSNR change (dB) per set, and the largest value change over all images (outputs clamped)."""
    out: dict[str, float] = {}
    worst = 0.0
    for name, limit in sets.items():
        deltas = []
        for pair in find_pairs(SHARED / "data" / "benchmark" / name, 4)[:limit]:
            hr, lr = load_pair(pair, 4)
            x = to_tensor(lr).to(DEVICE)
            got, want = runner(x).float().clamp(0, 1), reference(x).float().clamp(0, 1)
            worst = max(worst, (got - want).abs().max().item())
            deltas.append(psnr_y(to_uint8(to_array(got)), hr, 4) - psnr_y(to_uint8(to_array(want)), hr, 4))
        out[name] = float(np.mean(deltas))
    out["max_abs_change"] = worst
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
        times, rates, _ = interleaved(convs, torch.empty(0), gemm, rounds)
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


def e2e_photo(folder: Path) -> Path:
    """A 1443x963 photo: a 3x3 mosaic of the first landscape BSD200 training images (never shipped)."""
    files = sorted((SHARED / "data" / "train" / "BSD200" / "HR").glob("*.png"))
    tiles = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    tiles = [t for t in tiles if t.shape[:2] == (321, 481)][: E2E_GRID[0] * E2E_GRID[1]]
    rows = [np.concatenate(tiles[r * E2E_GRID[1] : (r + 1) * E2E_GRID[1]], axis=1) for r in range(E2E_GRID[0])]
    path = folder / "photo.png"
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    return path


def upscale_wall_s(photo: Path, out: Path, cache: Path, weights: str, extra: list[str]) -> tuple[float, str]:
    """(seconds, what it printed about back-end / precision) of one ``dsclora upscale`` in a fresh process."""
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    command = [sys.executable, "-m", "dsclora.cli", "upscale", str(photo), "-o", str(out), "--overwrite"]
    start = time.perf_counter()
    done = subprocess.run([*command, "--weights", weights, *extra], env=env, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    said = [line for line in done.stderr.splitlines() if re.match(r"(backend|tile):", line)]
    return seconds, " | ".join(said)


def end_to_end(weights: str, rounds: int) -> dict:
    """``dsclora upscale`` of a large photo with no precision flag (auto) and with ``--precision fp32``."""
    modes = {"auto": [], "fp32": ["--precision", "fp32"]}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        photo = e2e_photo(folder)
        result: dict = {"photo": "x".join(map(str, Image.open(photo).size)), "first_run_s": {}, "printed": {}}
        for mode, extra in modes.items():  # the first run fills auto's cache (one-off per machine and network)
            result["first_run_s"][mode], result["printed"][mode] = upscale_wall_s(
                photo, folder / mode, folder / "cache", weights, extra
            )
        times: dict[str, list[float]] = {mode: [] for mode in modes}
        for _ in range(rounds):
            for mode, extra in modes.items():
                times[mode].append(upscale_wall_s(photo, folder / mode, folder / "cache", weights, extra)[0])
    result["wall_s"] = {mode: statistics.median(t) for mode, t in times.items()}
    result["speedup_auto_vs_fp32"] = statistics.median(f / a for f, a in zip(times["fp32"], times["auto"], strict=True))
    result["rounds"] = rounds
    return result


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


def _time_sizes(runners: dict, gemm: Gemm, macs: dict, rounds: int, results: dict) -> list[float]:
    """Every path at every size, interleaved per round; ratios per round; the load around each size."""
    all_rates = []
    fp32_paths = [name for name in runners if name.split("/")[1] == "fp32"]
    for label, (h, w) in SIZES.items():
        x = torch.nn.functional.avg_pool2d(torch.rand(1, 3, h, w, device=DEVICE), 9, 1, 4)  # smooth like an image
        load_before = os.getloadavg()[0]
        times, rates, faults = interleaved(runners, x, gemm, rounds)
        results["load_average_1min"]["sizes"][label] = [load_before, os.getloadavg()[0]]
        all_rates += rates
        bounds = [2 * macs[label] / r for r in rates]
        ref = times["torch/fp32"]
        best_fp32 = [min(times[name][i] for name in fp32_paths) for i in range(rounds)]
        for name, t in times.items():
            own = times[own_fp32(name)]
            results["paths"].setdefault(name, {})[label] = {
                "latency_ms": statistics.median(t) * 1e3,
                "speedup_vs_reference": statistics.median(r / v for r, v in zip(ref, t, strict=True)),
                "speedup_vs_backend_fp32": statistics.median(o / v for o, v in zip(own, t, strict=True)),
                "speedup_vs_best_fp32": statistics.median(b / v for b, v in zip(best_fp32, t, strict=True)),
                "ratio_to_bound": statistics.median(v / b for v, b in zip(t, bounds, strict=True)),
                "minor_faults_per_forward": statistics.median(faults[name]),
            }
        results.setdefault("bound_ms", {})[label] = statistics.median(bounds) * 1e3
    return all_rates


def _accuracy(runners: dict, model, args) -> None:
    """Y-PSNR and value change of every reduced path, and auto's check on the reference images."""
    reference = runners["torch/fp32"]
    # every benchmark image has its own size: let the compiled paths compile each (past dynamo's default
    # limit of 8 shapes they would quietly fall back to eager and measure another path's arithmetic)
    with torch._dynamo.config.patch(recompile_limit=64):
        for name in [n for n in runners if not n.endswith("fp32")]:
            compiled = name.startswith("compile/")
            b100 = args.b100_compiled if compiled else args.b100
            row = args.results["paths"][name]
            row["psnr_y_change_db"] = psnr_change(runners[name], reference, {"Set5": 5, "B100": b100})
            row["psnr_y_change_db"]["b100_images"] = b100
            found = accuracy(runners[name], reference, model.scale, DEVICE)
            row["reference_images"] = {"db_change": found.db_change, "max_abs_change": found.max_abs, "ok": found.ok}


def _print_summary(results: dict, args) -> None:
    rate = results["gemm_gflops"]
    print(
        f"GEMM {rate:.0f} GFLOP/s (median of rounds, {results['gemm_size']}^2), {results['cpu_threads']} threads; "
        "bound " + ", ".join(f"{k} {v:.1f} ms" for k, v in results["bound_ms"].items())
    )
    print(
        "load average (1 min) before / after each size: "
        + ", ".join(f"{k} {a:.1f} / {b:.1f}" for k, (a, b) in results["load_average_1min"]["sizes"].items())
    )
    head = "".join(f"{label + ' ms':>14}{'x ref':>7}{'x own':>7}{'x fp32':>7}" for label in SIZES)
    print(f"{'path':<58}{head}  PSNR-Y change (Set5, B100), max |Δ|; reference images")
    for name, row in results["paths"].items():
        cells = "".join(
            f"{row[label]['latency_ms']:>14.1f}{row[label]['speedup_vs_reference']:>7.2f}"
            f"{row[label]['speedup_vs_backend_fp32']:>7.2f}{row[label]['speedup_vs_best_fp32']:>7.2f}"
            for label in SIZES
        )
        change = row.get("psnr_y_change_db")
        note = "exact (fp32)"
        if change:
            ref = row["reference_images"]
            note = (
                f"{change['Set5']:+.4f}, {change['B100']:+.4f} dB, {change['max_abs_change'] * 255:.1f}/255; "
                f"{ref['db_change']:+.4f} dB, {ref['max_abs_change'] * 255:.1f}/255 {'ok' if ref['ok'] else 'OUT'}"
            )
        print(f"{name:<58}{cells}  {note}")
    print(
        "one 3x3 NHWC conv at 256x256 vs its bound: "
        + ", ".join(f"{k} {v:.2f}x" for k, v in results["single_conv_ratio_to_bound"].items())
    )
    if "end_to_end_upscale" in results:
        e2e = results["end_to_end_upscale"]
        print(
            f"dsclora upscale {e2e['photo']} (median of {e2e['rounds']} alternated runs): no flag "
            f"{e2e['wall_s']['auto']:.1f} s, --precision fp32 {e2e['wall_s']['fp32']:.1f} s: "
            f"{e2e['speedup_auto_vs_fp32']:.2f}x; first runs (auto's cache filled) {e2e['first_run_s']['auto']:.1f} s "
            f"/ {e2e['first_run_s']['fp32']:.1f} s"
        )
        for mode, said in e2e["printed"].items():
            print(f"  {mode}: {said}")
    if "tiled_960x540_to_4k" in results:
        t4k = results["tiled_960x540_to_4k"]
        print(
            f"tiled 960x540 -> 3840x2160 (tile {args.tile}): peak RSS {t4k['peak_rss_mib']:.0f} MiB, "
            f"max |tiled - untiled| {t4k['max_abs_diff_vs_untiled']:.1e}"
        )
    for name, row in results.get("tiled_vs_untiled_600x400", {}).items():
        print(
            f"tiled / untiled 600x400, {name}: tile 128 {row['tile128']:.2f}x (overlap explains "
            f"{row['tile128_overlap_explains']:.2f}x), tile 64 {row['tile64']:.2f}x "
            f"(overlap explains {row['tile64_overlap_explains']:.2f}x)"
        )
    if "ntire_runtime_ms" in results:
        print(
            "NTIRE-style runtime (CUDA events, mean of "
            f"{args.ntire_images} forwards at 510x339; published: 8.37 ms on an RTX A6000):\n  "
            + "\n  ".join(
                f"{k:<24} {v:.2f} ms  {results['ntire_speedup_vs_eager_fp32'][k]:.2f}x eager fp32"
                for k, v in results["ntire_runtime_ms"].items()
            )
        )
        print(f"untiled 960x540 -> 4K: peak GPU allocation {results['cuda_peak_untiled_960x540_to_4k_mib']:.0f} MiB")


def markdown_table(results: dict) -> str:
    """The README's speed table from a results JSON: per size, latency (x eager NCHW fp32 / x the same back-end
    in fp32 / x fastest fp32)."""
    labels = [label for label in SIZES if label in results["bound_ms"]]
    lines = [
        "| path | "
        + " | ".join(f"{label} ms (x eager / x own fp32 / x best fp32)" for label in labels)
        + " | Y-PSNR change Set5, B100 (max abs) | reference images |",
        "|---" * (len(labels) + 3) + "|",
    ]
    for name, row in results["paths"].items():
        cells = [
            f"{row[label]['latency_ms']:.0f} ({row[label]['speedup_vs_reference']:.2f}x / "
            f"{row[label]['speedup_vs_backend_fp32']:.2f}x / {row[label]['speedup_vs_best_fp32']:.2f}x)"
            for label in labels
        ]
        change, ref = row.get("psnr_y_change_db"), row.get("reference_images")
        accuracy_cells = ["exact", "—"]
        if change:
            accuracy_cells = [
                f"{change['Set5']:+.4f}, {change['B100']:+.4f} dB ({change['max_abs_change'] * 255:.1f}/255)",
                f"{ref['db_change']:+.4f} dB, {ref['max_abs_change'] * 255:.1f}/255: {'within' if ref['ok'] else 'outside'}",
            ]
        lines.append(f"| {name} | " + " | ".join(cells + accuracy_cells) + " |")
    return "\n".join(lines)


def _whole_picture(runners: dict, model, args, results: dict) -> None:
    """What a full run adds: the GPU's NTIRE runtime and memory, or the CPU's tiled-4K memory; tiling costs;
    the end-to-end upscale (CPU)."""
    if DEVICE.type == "cuda":
        results["gemm_fp16_tflops"] = Gemm(sizes=(4096, 8192), dtype=torch.float16).rate() / 1e12
        results["cuda_peak_untiled_960x540_to_4k_mib"] = cuda_peak_untiled_4k_mib(runners["torch/fp32"])
        results["ntire_runtime_ms"] = {name: ntire_runtime_ms(runners[name], args.ntire_images) for name in runners}
        ref_ms = results["ntire_runtime_ms"]["torch/fp32"]
        results["ntire_speedup_vs_eager_fp32"] = {k: ref_ms / v for k, v in results["ntire_runtime_ms"].items()}
        results["ntire_runtime_published_ms"] = {"value": 8.37, "gpu": "RTX A6000 (NTIRE 2025 ESR report)"}
    else:
        child = subprocess.run(
            [sys.executable, __file__, "--tiled-4k-child", "--weights", args.weights, "--tile", str(args.tile)]
            + ["--malloc-defaults"] * args.malloc_defaults,
            capture_output=True,
            text=True,
            check=True,
        )
        results["tiled_960x540_to_4k"] = {"tile": args.tile, **json.loads(child.stdout.strip().splitlines()[-1])}
    eager = {n: r for n, r in runners.items() if n.split("/")[0] in ("torch", "channels_last", "onnxruntime")}
    eager = {n: r for n, r in eager.items() if n.split("/")[1] == "fp32"}
    results["tiled_vs_untiled_600x400"] = tiling_cost(eager, model.receptive_radius, max(3, args.runs // 3))
    if DEVICE.type != "cuda":
        runners.clear()  # the end-to-end runs get the machine to themselves
        eager.clear()
        results["end_to_end_upscale"] = end_to_end(args.weights, args.e2e_rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="default", help="weights name or file (default: the shipped model)")
    parser.add_argument("--runs", type=int, default=11, help="timing rounds, every path and a GEMM each (default 11)")
    parser.add_argument("--b100", type=int, default=100, help="B100 images for the precision cost (default 100)")
    parser.add_argument(
        "--b100-compiled", type=int, default=20, help="B100 images for compiled paths (each size compiles; default 20)"
    )
    parser.add_argument("--e2e-rounds", type=int, default=3, help="alternated end-to-end upscale runs (default 3)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.add_argument("--tile", type=int, default=256, help="tile of the tiled 4K memory figure (default 256)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run (default cpu)")
    parser.add_argument("--ntire-images", type=int, default=50, help="forwards averaged for the NTIRE runtime (GPU)")
    parser.add_argument("--json", help="output file (default benchmarks/results/infer.json, infer_cuda.json on a GPU)")
    parser.add_argument(
        "--markdown", metavar="JSON", help="print the README's table from a results file, measure nothing"
    )
    parser.add_argument(
        "--paths",
        help="comma-separated paths (e.g. channels_last/bf16-accurate) to time and check alone, with the eager fp32 "
        "reference and their back-ends' fp32; no candidates, tiling, 4K or end-to-end figures",
    )
    parser.add_argument(
        "--malloc-defaults",
        action="store_true",
        help="time with glibc's malloc thresholds as they are (the command line raises them: "
        "devices.keep_freed_memory); the end-to-end runs are the command line's either way",
    )
    parser.add_argument("--tiled-4k-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.markdown:
        print(markdown_table(json.loads(Path(args.markdown).read_text())))
        return
    os.environ.setdefault("DSCLORA_WEIGHTS_DIR", str(SHARED / "weights"))
    kept = False if args.malloc_defaults else keep_freed_memory()  # as ``dsclora`` runs
    if args.threads:
        torch.set_num_threads(args.threads)
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
    macs = {label: conv_statistics(model.module, (1, 3, h, w))["macs"] for label, (h, w) in SIZES.items()}
    torch.backends.cuda.matmul.fp32_precision = "ieee"  # the bound is a true fp32 GEMM, never TF32
    gemm = Gemm(sizes=(2048, 4096, 8192) if cuda else CPU_GEMM_SIZES)
    paths = {path_name(b, p, pad): (b, p, pad) for b, p, pad in (CUDA_PATHS if cuda else PATHS)}
    if args.paths:
        asked = args.paths.split(",")
        if unknown := [name for name in asked if name not in paths]:
            sys.exit(f"infer.py: unknown path {unknown[0]!r} (paths: {', '.join(paths)})")
        keep = {"torch/fp32", *asked, *(own_fp32(name) for name in asked)}
        paths = {name: path for name, path in paths.items() if name in keep}
    runners = {name: make_runner(model, b, DEVICE, p, pad) for name, (b, p, pad) in paths.items()}
    if not cuda and not args.paths:
        runners |= candidates(model)
    results: dict = {
        "machine": device_name(DEVICE),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "weights": model.label,
        "gemm_size": gemm.size,
        "rounds": args.runs,
        "kept_freed_memory": kept,
        "load_average_1min": {"start": os.getloadavg()[0], "sizes": {}},
        "paths": {},
    }
    args.results = results
    all_rates = _time_sizes(runners, gemm, macs, args.runs, results)
    results["gemm_gflops"] = statistics.median(all_rates) / 1e9
    results["single_conv_ratio_to_bound"] = conv_width_floor(model.module.config.channels, gemm, args.runs)
    _accuracy(runners, model, args)
    if not args.paths:
        _whole_picture(runners, model, args, results)
    results["load_average_1min"]["end"] = os.getloadavg()[0]
    del args.results
    with atomic_write(args.json) as tmp:
        tmp.write_text(json.dumps(results, indent=2))
    _print_summary(results, args)


if __name__ == "__main__":
    main()
