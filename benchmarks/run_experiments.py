"""Run the CPU-scale DSCLoRA study (configs/experiments/) and save what the report needs.

For each config: train (skipped when ``runs/experiments/<name>/final.safetensors`` exists), then evaluate the
merged model on Set5 / Set14 / B100 x4 and write ``benchmarks/results/experiments/<name>.json`` (config,
per-set and per-image Y-PSNR / SSIM, the training curve, wall time). The untrained bases and the official
release are evaluated the same way (``base_*``, ``official_dscf``). Re-running skips finished work.

    python benchmarks/run_experiments.py [NAME ...]     # default: every config, core runs first
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

import torch
import yaml

from dsclora.backends import make_runner
from dsclora.checkpoints import load_model
from dsclora.evaluate import evaluate_dataset
from dsclora.train.config import load_config
from dsclora.train.loop import Trainer
from dsclora.utils import atomic_write
from dsclora.weights import resolve

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CONFIGS = REPO / "configs" / "experiments"
RESULTS = REPO / "benchmarks" / "results" / "experiments"
SETS = ("Set5", "Set14", "B100")
BASELINES = {"base_span-tiny": "span-tiny", "base_span-ch28": "span-ch28", "official_dscf": "dscf"}
GROUPS = (("ii_", "iii_", "iv_"), ("abl_",), ("ch28_",))  # core comparison first, then ablations, second base


def evaluate(weights: str | Path) -> dict:
    model, _ = load_model(resolve(str(weights)))
    runner, _ = make_runner(model, "channels_last", torch.device("cpu"))
    out = {}
    for name in SETS:
        r = evaluate_dataset(runner, SHARED / "data" / "benchmark" / name, 4, torch.device("cpu"), progress=False)
        out[name] = {
            "psnr_y": r["psnr_y"],
            "ssim_y": r["ssim_y"],
            "psnr_rgb": r["psnr_rgb"],
            "per_image_psnr_y": [row["psnr_y"] for row in r["per_image"]],
        }
    return out


def curve(run_dir: Path) -> list[dict]:
    path = run_dir / "train.csv"
    if not path.is_file():
        return []
    with open(path) as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def write(name: str, payload: dict) -> None:
    with atomic_write(RESULTS / f"{name}.json") as tmp:  # a killed run must not leave a "done" half-file
        tmp.write_text(json.dumps(payload, indent=1))


def weight_change(final: Path, base: str) -> float:
    """||W_final - W_base|| / ||W_base|| over every tensor: how far training moved the network."""
    trained, _ = load_model(final)
    start, _ = load_model(resolve(base))
    a, b = trained.state_dict(), start.state_dict()
    diff = sum(float((a[k] - b[k]).pow(2).sum()) for k in b)
    norm = sum(float(b[k].pow(2).sum()) for k in b)
    return (diff / norm) ** 0.5


def run_config(path: Path) -> None:
    name = path.stem
    config = load_config(path)
    base = config.model.base or config.model.init
    saved = RESULTS / f"{name}.json"
    if saved.exists():
        payload = json.loads(saved.read_text())
        final = REPO / config.run.output / "final.safetensors"
        if "weight_change" not in payload and final.exists():  # backfill runs saved before this field existed
            payload["weight_change"] = weight_change(final, base)
            write(name, payload)
        return
    run_dir = REPO / config.run.output
    final = run_dir / "final.safetensors"
    start = time.time()
    if not final.exists():
        Trainer(config, resume=(run_dir / "latest.pt").exists(), quiet=True).run()
    seconds = time.time() - start
    title = path.read_text().splitlines()[0].lstrip("# ").split(". Written")[0]
    write(
        name,
        {
            "name": name,
            "title": title,
            "config": yaml.safe_load(path.read_text()),
            "train_seconds": seconds,
            "eval": evaluate(final),
            "curve": curve(run_dir),
            "weight_change": weight_change(final, base),
        },
    )
    print(f"{name}: done in {time.time() - start:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="config names (default: all)")
    args = parser.parse_args()
    os.environ.setdefault("DSCLORA_WEIGHTS_DIR", str(SHARED / "weights"))
    os.chdir(REPO)  # recipes name ../shared relative to the repository
    for name, weights in BASELINES.items():
        if not (RESULTS / f"{name}.json").exists():
            write(name, {"name": name, "title": f"untrained / released: {weights}", "eval": evaluate(weights)})
            print(f"{name}: evaluated", flush=True)
    configs = sorted(CONFIGS.glob("*.yaml"))
    if args.names:
        configs = [CONFIGS / f"{n}.yaml" for n in args.names]

    def order(path: Path) -> tuple[int, str, str]:
        group = next(i for i, prefixes in enumerate(GROUPS) if path.stem.startswith(prefixes))
        return group, path.stem[-1], path.stem  # group, seed, name

    for path in sorted(configs, key=order):
        run_config(path)


if __name__ == "__main__":
    main()
