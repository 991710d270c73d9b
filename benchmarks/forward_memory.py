"""What one untiled forward really takes in memory, beside the tensor peak that ``--tile auto`` estimates it from:
the measurement behind ``runtime.upscale.PEAK_MARGIN``.

For each network and CPU path, a fresh process loads the network, warms the path up on a 32x32 input, resets
the peak resident set (``measure.profiling.reset_peak_memory``) and runs one forward of a smoothed random
input; the rise of the peak over the resident set before the forward, per LR pixel, is set beside the tensor
peak per pixel of the probe ``dsclora upscale`` uses (``measure.profiling.probe_peak_per_pixel``). Freed memory
is kept, as the command line keeps it. The embedded model always; HAESR and CRAFT when ``../shared`` holds them
(slow networks: a smaller input).

    python benchmarks/forward_memory.py [--json benchmarks/results/forward_memory.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from dsclora.devices import device_name, keep_freed_memory
from dsclora.fs import atomic_write
from dsclora.measure.profiling import current_memory, peak_memory, probe_peak_per_pixel, reset_peak_memory
from dsclora.runtime.backends import make_runner
from dsclora.runtime.upscale import PEAK_MARGIN
from dsclora.weights.load import load

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
NETWORKS = {  # label: (weights, LR input (height, width), needs ../shared)
    "default (SPAN-tiny DSCLoRA)": ("default", (540, 960), False),
    "HAESR": (str(REPO / "configs/models/haesr.yaml"), (136, 240), True),
    "CRAFT": (str(SHARED / "weights/ntire2024_team34_craft.pth"), (136, 240), True),
}
CHILD_SECONDS = 600
PATHS = (("torch", "fp32"), ("channels_last", "fp32"), ("onnxruntime", "fp32"), ("channels_last", "bf16-accurate"))


def child(weights: str, backend: str, precision: str, height: int, width: int) -> None:
    """One fresh process: the peak RSS rise of one forward, in bytes per LR pixel (printed as JSON)."""
    keep_freed_memory()
    cpu = torch.device("cpu")
    loaded = load(weights)
    runner = make_runner(loaded, backend, cpu, precision)
    with torch.inference_mode():
        runner(torch.rand(1, 3, 32, 32))
        x = torch.nn.functional.avg_pool2d(torch.rand(1, 3, height, width), 9, 1, 4)
        reset_peak_memory(cpu)
        before = current_memory(cpu)
        runner(x)
        rise = peak_memory(cpu) - before
    print(json.dumps({"rss_bytes_per_pixel": rise / (height * width)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default="benchmarks/results/forward_memory.json", help="output file")
    parser.add_argument(
        "--child", nargs=5, metavar=("WEIGHTS", "BACKEND", "PRECISION", "H", "W"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        weights, backend, precision, h, w = args.child
        child(weights, backend, precision, int(h), int(w))
        return
    out: dict = {"machine": device_name(torch.device("cpu")), "threads": torch.get_num_threads(), "margin": PEAK_MARGIN}
    worst = 0.0
    for label, (weights, (h, w), shared) in NETWORKS.items():
        if shared and not Path(weights).exists():
            print(f"{label}: skipped ({weights} absent: ../shared is not here)")
            continue
        tracked = probe_peak_per_pixel(load(weights))
        row: dict = {"input": f"{w}x{h}", "tracked_bytes_per_pixel": tracked, "paths": {}}
        for backend, precision in PATHS:
            command = [sys.executable, __file__, "--child", weights, backend, precision, str(h), str(w)]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=CHILD_SECONDS)
            except subprocess.TimeoutExpired:
                row["paths"][f"{backend}/{precision}"] = {"error": f"no result within {CHILD_SECONDS} s"}
                continue
            if done.returncode != 0:
                last = (done.stderr.strip() or f"exit status {done.returncode}").splitlines()[-1]
                row["paths"][f"{backend}/{precision}"] = {"error": last}
                continue
            rss = json.loads(done.stdout.strip().splitlines()[-1])["rss_bytes_per_pixel"]
            row["paths"][f"{backend}/{precision}"] = {"rss_bytes_per_pixel": rss, "over_tracked": rss / tracked}
            worst = max(worst, rss / tracked)
            print(f"{label} {backend}/{precision} at {w}x{h}: {rss:.0f} B per LR pixel, {rss / tracked:.2f}x the "
                  f"{tracked:.0f} tracked", flush=True)  # fmt: skip
        out[label] = row
    out["worst_over_tracked"] = worst
    print(f"worst real peak over tracked: {worst:.2f}x (margin {PEAK_MARGIN})")
    with atomic_write(args.json) as tmp:
        tmp.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
