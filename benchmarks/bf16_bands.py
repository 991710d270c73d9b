"""BF16SPAN's band size: a 480x270 and a 960x540 forward of the shipped model with the fp32 element-wise passes
over row bands of 2^15 .. 2^20 elements (``models/span/fused_bf16.py``'s ``_BAND``), beside channels_last fp32,
medians of interleaved rounds; writes benchmarks/results/bf16_bands.json.

    python benchmarks/bf16_bands.py [--rounds 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from dsclora.devices import device_name, keep_freed_memory
from dsclora.fs import atomic_write
from dsclora.models.span import BF16SPAN, FusedSPAN, fused_bf16
from dsclora.weights.load import load

BANDS = (1 << 15, 1 << 16, 1 << 17, 1 << 18, 1 << 19, 1 << 20)
SIZES = {"480x270": (270, 480), "960x540": (540, 960)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (default 7)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--json", default="benchmarks/results/bf16_bands.json", help="output file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kept = keep_freed_memory()  # as the command line does: freed feature maps stay mapped
    model = load("default")
    accurate = BF16SPAN.from_fused(FusedSPAN.from_span(model.module))
    fp32 = FusedSPAN.from_span(model.module).eval().to(memory_format=torch.channels_last)
    default = fused_bf16._BAND
    out: dict = {
        "machine": device_name(torch.device("cpu")),
        "threads": args.threads,
        "rounds": args.rounds,
        "kept_freed_memory": kept,
    }
    for label, (h, w) in SIZES.items():
        x = torch.nn.functional.avg_pool2d(torch.rand(1, 3, h, w), 9, 1, 4).contiguous(
            memory_format=torch.channels_last
        )
        times: dict[str, list[float]] = {}
        with torch.inference_mode():
            fp32(x), accurate(x)
            for _ in range(args.rounds):
                for name in ["fp32", *map(str, BANDS)]:
                    fused_bf16._BAND = int(name) if name != "fp32" else default
                    start = time.perf_counter()
                    (fp32 if name == "fp32" else accurate)(x)
                    times.setdefault(name, []).append(time.perf_counter() - start)
        fused_bf16._BAND = default
        out[label] = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        print(label, ", ".join(f"{k} {v:.1f} ms" for k, v in out[label].items()), flush=True)
    with atomic_write(args.json) as tmp:
        tmp.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
