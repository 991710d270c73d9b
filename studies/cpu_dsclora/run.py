"""Run the CPU-scale study (studies/cpu_dsclora/configs/) and save what the report needs.

For each config: train (resumed if interrupted, skipped when ``runs/study/<name>/final.safetensors`` exists),
then evaluate the merged model on Set5 / Set14 / B100 x4 and write ``results/<name>.json`` (config, per-set and
per-image Y-PSNR / SSIM, the training curve, wall time, how far the weights moved). The references are
evaluated the same way: SPAN-tiny, its x8 self-ensemble (the teacher of (b) and (c)), SPAN ch28 and its x8
self-ensemble (the shipped model's teacher), the official DSCLoRA release and the shipped default. Each JSON
names the CPU it was measured on. Every JSON is written atomically, and an existing one counts as done.

    python studies/cpu_dsclora/run.py [NAME ...]     # default: every config (seed 0 ones first); references first
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

from dsclora.devices import cpu_model
from dsclora.fs import atomic_write
from dsclora.measure.evaluate import evaluate_dataset
from dsclora.models.ensemble import SelfEnsemble
from dsclora.runtime.backends import make_runner
from dsclora.train.config import load_config
from dsclora.train.loop import Trainer
from dsclora.weights.load import load

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SHARED = REPO.parent / "shared"
RESULTS = HERE / "results"
SETS = ("Set5", "Set14", "B100")
REFERENCES = {  # name: (weights, self-ensemble size)
    "ref_span-tiny": ("span-tiny", 1),
    "ref_span-tiny_x8": ("span-tiny", 8),
    "ref_span-ch28": ("span-ch28", 1),
    "ref_span-ch28_x8": ("span-ch28", 8),  # the shipped model's teacher (studies/teacher_choice)
    "ref_dscf": ("dscf", 1),
    "ref_shipped": ("default", 1),
}


def evaluate(weights: str | Path, ensemble: int = 1) -> dict:
    loaded = load(str(weights))
    runner = make_runner(loaded, "channels_last", torch.device("cpu"))
    upscale = SelfEnsemble(runner, ensemble) if ensemble > 1 else runner
    out = {}
    for name in SETS:
        r = evaluate_dataset(upscale, SHARED / "data" / "benchmark" / name, 4, progress=False)
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
    a, b = load(str(final)).module.state_dict(), load(base).module.state_dict()
    diff = sum(float((a[k] - b[k]).pow(2).sum()) for k in b)
    return (diff / sum(float(b[k].pow(2).sum()) for k in b)) ** 0.5


def run_config(path: Path) -> None:
    name = path.stem
    if (RESULTS / f"{name}.json").exists():
        return
    config = load_config(path)
    run_dir = REPO / config.run.output
    final = run_dir / "final.safetensors"
    start = time.time()
    if not final.exists():
        resume = (run_dir / "latest.pt").exists()  # no checkpoint yet: a cut-short start is replaced
        Trainer(config, resume=resume, overwrite=not resume, quiet=True).run()
    seconds = time.time() - start
    title = path.read_text().splitlines()[0].lstrip("# ").split(". Written")[0]
    payload = {
        "name": name,
        "title": title,
        "config": yaml.safe_load(path.read_text()),
        "machine": cpu_model(),
        "train_seconds": seconds,
        "eval": evaluate(final),
        "curve": curve(run_dir),
        "weight_change": weight_change(final, config.model.base),
    }
    write(name, payload)
    print(f"{name}: done in {time.time() - start:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="config names (default: all)")
    args = parser.parse_args()
    os.environ.setdefault("DSCLORA_WEIGHTS_DIR", str(SHARED / "weights"))
    os.chdir(REPO)  # recipes name ../shared relative to the repository
    for name, (weights, ensemble) in REFERENCES.items():
        if not (RESULTS / f"{name}.json").exists():
            payload = {"name": name, "weights": weights, "ensemble": ensemble, "machine": cpu_model()}
            write(name, payload | {"eval": evaluate(weights, ensemble)})
            print(f"{name}: evaluated", flush=True)
    configs = [HERE / "configs" / f"{n}.yaml" for n in args.names]  # in the order given
    if not configs:  # every recipe's seed 0 first
        configs = sorted((HERE / "configs").glob("*.yaml"), key=lambda p: (p.stem[-1], p.stem))
    for path in configs:
        run_config(path)


if __name__ == "__main__":
    main()
