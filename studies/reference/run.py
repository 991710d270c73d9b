"""Re-measure the reference figures quoted in the README: bicubic baselines, the MATLAB-downscale match
against the official LR files, and the official checkpoints on Set5 / Set14 / B100 (x4).

    python studies/reference/run.py [--shared ../shared] [--json studies/reference/results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from dsclora.data.benchmark import find_pairs
from dsclora.data.images import read_uint8_rgb
from dsclora.data.imresize import imresize
from dsclora.fs import atomic_write
from dsclora.measure.evaluate import evaluate_dataset
from dsclora.models.bicubic import Bicubic
from dsclora.weights.load import load

SETS = ("Set5", "Set14", "B100")


def lr_match(root: Path, scale: int) -> dict:
    worst, equal, total = 0, 0, 0
    for pair in find_pairs(root, scale):
        ours = imresize(read_uint8_rgb(pair.hr), 1 / scale)
        diff = np.abs(ours.astype(int) - read_uint8_rgb(pair.lr).astype(int))
        inner = diff[1:-1, 1:-1]
        worst = max(worst, int(inner.max()))
        equal += int((inner == 0).sum())
        total += inner.size
    return {"max_abs_diff_interior": worst, "identical_fraction_interior": equal / total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--shared", default=str(Path(__file__).resolve().parents[3] / "shared"), help="the workspace's shared folder"
    )
    parser.add_argument("--json", default="studies/reference/results.json", help="where the figures go")
    args = parser.parse_args()
    shared = Path(args.shared)
    os.environ.setdefault("DSCLORA_WEIGHTS_DIR", str(shared / "weights"))
    bench = shared / "data" / "benchmark"
    device = torch.device("cpu")
    out: dict = {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "bicubic": {},
        "lr_match": {},
        "models": {},
    }
    start = time.time()
    for scale in (2, 3, 4):
        for name in SETS:
            r = evaluate_dataset(Bicubic(scale), bench / name, scale, device, progress=False)
            out["bicubic"][f"{name}_x{scale}"] = {k: r[k] for k in ("images", "psnr_y", "ssim_y", "psnr_rgb")}
            out["lr_match"][f"{name}_x{scale}"] = lr_match(bench / name, scale)
            print(f"bicubic {name} x{scale}: {r['psnr_y']:.3f} / {r['ssim_y']:.4f}", flush=True)
    for weights in ("dscf", "span-tiny", "span-ch28"):
        loaded = load(weights, device)
        scale = loaded.scale
        for name in SETS:
            r = evaluate_dataset(loaded.module, bench / name, scale, device, progress=False)
            out["models"][f"{weights}_{name}_x{scale}"] = {k: r[k] for k in ("images", "psnr_y", "ssim_y", "psnr_rgb")}
            print(
                f"{weights} {name} x{scale}: {r['psnr_y']:.3f} / {r['ssim_y']:.4f} / RGB {r['psnr_rgb']:.3f}",
                flush=True,
            )
    out["seconds"] = time.time() - start
    with atomic_write(args.json) as tmp:
        tmp.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
