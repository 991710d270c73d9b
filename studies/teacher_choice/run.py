"""Choose the shipped recipe's teacher and precision on held-out training images, never on a benchmark set.

Question: which teacher gives the ConvLoRA student the most, and does bf16 autocast (3.1x faster per step on a
CPU with AMX-bf16 by a first microbenchmark; these runs measured 1.3x) keep the gain? Everything is judged on a validation split of the training pool: every 5th
BSD200 image by name (40 images, the BSDS300 *training* split, disjoint from B100) is held out; the student
trains on the other 160, T91 and the 209 unlabelled LR photos, as the shipped recipe does.

Runs (1500 Adam steps, batch 32 of 48x48 LR patches, lr 5e-4 cosine to 0, EMA 0.995, ConvLoRA ranks 8 / 16,
L = L1(SR, cached x8 self-ensemble SR of the teacher), seed 0, 2 threads):

- ``tiny_fp32``: teacher SPAN-tiny x8 (the recipe shipped until now), fp32;
- ``ch28_fp32``: teacher SPAN ch28 x8 (NTIRE 2024 team 38; C = 28: a stronger network than the student), fp32;
- ``ch28_bf16``: the same with ``optim.amp: bf16``.

Decision rules, fixed before any run: (1) the teacher is the one whose fp32 student gains most over SPAN-tiny on
the validation split; (2) the shipped run uses bf16 if the bf16 student keeps at least 90 % of the fp32
student's gain with the same teacher, else fp32; (3) the shipped run's length is what about 2.5 hours of this
2-core CPU allows at batch 48: 16,000 steps with bf16, 5,000 steps in fp32 (the earlier recipe's length).

    python studies/teacher_choice/run.py [NAME ...]   # references, then the runs; results/*.json; resumable

Results land in ``results/<name>.json`` (atomically; an existing file counts as done) and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import yaml

from dsclora.data.images import list_images
from dsclora.devices import cpu_model
from dsclora.fs import atomic_write
from dsclora.measure.evaluate import evaluate_dataset
from dsclora.models.ensemble import SelfEnsemble
from dsclora.train.config import load_config
from dsclora.train.loop import Trainer
from dsclora.weights.load import load

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SHARED = REPO.parent / "shared"
RESULTS = HERE / "results"
SPLIT = REPO / "runs" / "teacher_choice" / "split"  # symlinks: train_bsd/ (160 images), val/ (40)
HOLD_OUT_EVERY = 5
REFERENCES = {  # name: the (weights, self-ensemble size) whose outputs are averaged
    "ref_span-tiny": [("span-tiny", 1)],
    "ref_span-tiny_x8": [("span-tiny", 8)],
    "ref_span-ch28": [("span-ch28", 1)],
    "ref_span-ch28_x8": [("span-ch28", 8)],
    "ref_span-tiny_x8+ch28_x8": [("span-tiny", 8), ("span-ch28", 8)],
    "ref_dscf": [("dscf", 1)],
}
COMMON = {
    "model": {
        "arch": "dsclora",
        "base": "span-tiny",
        "lora": {"block_rank": 8, "block_alpha": 16, "tail_rank": 16, "tail_alpha": 32},
    },
    "data": {
        "train": [str(SPLIT / "train_bsd"), "../shared/data/train/T91"],
        "train_lr": ["../shared/data/train_lr_x4/SunHays80", "../shared/data/train_lr_x4/Wallpapers"],
        "val": [],
        "patch": 48,
        "batch": 32,
        "workers": 1,
    },
    "loss": {"rec": 0.0, "teacher": 1.0, "affinity": 0.0, "teacher_ensemble": 8, "teacher_targets": "cached"},
    "optim": {"optimizer": "adam", "lr": 5.0e-4, "scheduler": "cosine", "min_lr": 0.0, "ema_decay": 0.995},
    "run": {"steps": 1500, "seed": 0, "log_every": 25, "val_every": 0, "checkpoint_every": 250, "threads": 2},
}
RUNS = {  # name: (teacher, amp)
    "tiny_fp32": (None, "none"),
    "ch28_fp32": ("span-ch28", "none"),
    "ch28_bf16": ("span-ch28", "bf16"),
}


def make_split() -> None:
    """Every HOLD_OUT_EVERY-th BSD200 image (by name) into val/, the rest into train_bsd/, as symlinks."""
    images = list_images(SHARED / "data" / "train" / "BSD200" / "HR")
    for sub in ("train_bsd", "val"):
        (SPLIT / sub).mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(images):
        link = SPLIT / ("val" if i % HOLD_OUT_EVERY == 0 else "train_bsd") / path.name
        if not link.exists():
            link.symlink_to(path)


def config_of(name: str) -> dict:
    teacher, amp = RUNS[name]
    config = json.loads(json.dumps(COMMON))
    config["name"] = f"teacher_choice_{name}"
    config["model"]["teacher"] = teacher
    config["optim"]["amp"] = amp
    config["run"]["output"] = f"runs/teacher_choice/{name}"
    return config


def val_psnr(members: list[tuple[str | Path, int]]) -> dict:
    """Y-PSNR / SSIM on the validation split of the mean output of ``members`` (weights, self-ensemble size)."""
    nets = [SelfEnsemble(load(str(weights)).span, ensemble) for weights, ensemble in members]
    r = evaluate_dataset(lambda x: sum(net(x) for net in nets) / len(nets), SPLIT / "val", 4, progress=False)
    return {"psnr_y": r["psnr_y"], "ssim_y": r["ssim_y"], "per_image_psnr_y": [row["psnr_y"] for row in r["per_image"]]}


def write(name: str, payload: dict) -> None:
    with atomic_write(RESULTS / f"{name}.json") as tmp:
        tmp.write_text(json.dumps(payload, indent=1))


def run(name: str) -> None:
    if (RESULTS / f"{name}.json").exists():
        return
    path = HERE / "configs" / f"{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"# Written by studies/teacher_choice/run.py.\n{yaml.safe_dump(config_of(name), sort_keys=False)}")
    config = load_config(path)
    run_dir = REPO / config.run.output
    start = time.time()
    if not (run_dir / "final.safetensors").exists():
        Trainer(config, resume=(run_dir / "latest.pt").exists(), quiet=True).run()
    summary = json.loads((run_dir / "summary.json").read_text())
    write(
        name,
        {
            "name": name,
            "config": config.to_dict(),
            "machine": cpu_model(),
            "train_seconds": summary["seconds"],
            "wall_seconds": time.time() - start,
            "val": val_psnr([(run_dir / "final.safetensors", 1)]),
        },
    )
    print(f"{name}: done in {time.time() - start:.0f} s", flush=True)


def table() -> None:
    base = json.loads((RESULTS / "ref_span-tiny.json").read_text())["val"]["psnr_y"]
    print(f"{'run':<26}{'val Y-PSNR':>12}{'gain':>9}")
    for path in sorted(RESULTS.glob("*.json")):
        psnr = json.loads(path.read_text())["val"]["psnr_y"]
        print(f"{path.stem:<26}{psnr:>12.4f}{psnr - base:>+9.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"runs, in order (default: {', '.join(RUNS)})")
    args = parser.parse_args()
    os.environ.setdefault("DSCLORA_WEIGHTS_DIR", str(SHARED / "weights"))
    os.chdir(REPO)  # the recipes name ../shared relative to the repository
    make_split()
    for name, members in REFERENCES.items():
        if not (RESULTS / f"{name}.json").exists():
            write(name, {"name": name, "members": members, "machine": cpu_model(), "val": val_psnr(members)})
            print(f"{name}: evaluated", flush=True)
    for name in args.names or RUNS:
        run(name)
    table()


if __name__ == "__main__":
    main()
