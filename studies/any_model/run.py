"""Does the recommended recipe improve networks other than SPAN? Four published efficient-SR networks, each taught
by two teachers, judged on held-out training images; benchmark sets only reported.

Written before any run (issue #18). Machine: 2 threads of an AMD EPYC, family 25 model 17 (Zen 4, AVX512-BF16).

Bases (the NTIRE kits' own model files and weights, loaded through ``configs/models/*.yaml``):
SPANV2 (x4, NTIRE 2026 ESR winner), SAFMNv3 (x4), RLFN (x4, input in [0, 255]), RLFN-S x2 (x2).

Teachers: the base's own x8 self-ensemble, and HAESR (``configs/models/haesr.yaml``, single pass) for the x4 bases
(HAESR exists at x4 only): 7 runs.

The recipe, the same for every base (the recommended recipe, ``configs/dsclora_x4_ens.yaml``, made architecture-
blind): L = L1(student SR, cached teacher SR); ConvLoRA rank 8, α 16 on every Conv2d (LoRA on every Linear) but
the head (the first layer the image meets); Adam, lr 5e-4 cosine to 0, EMA 0.995, 1500 steps of batch 32 of
48x48 LR patches, bf16 autocast, seed 0. Data: the split of ``studies/teacher_choice`` (160 BSD200 images, T91,
the 209 unlabelled LR photos); validation: its 40 held-out BSD200 images (LR by MATLAB bicubic at the base's
scale). Nothing is chosen on Set5 / Set14 / B100: they are evaluated after training, for the record.

Rule: each base's teacher is the one whose student gains more on the held-out images (the issue's bar: at least
+0.03 dB there, no loss on any benchmark set, parameters and MACs unchanged; reported whether met or not).

Part 2, written after part 1's seven runs and before any of its own: no base met the bar, and SAFMNv3, RLFN and
RLFN-S x2 lost with every teacher although every teacher is above its student. ``diagnose.py`` then found that the
bases' bf16-autocast forward is 0.36-0.44 grey levels (mean absolute) from their fp32 forward (SPANV2, RLFN, RLFN-S
x2; SAFMNv3 0.15), as large as the distance between base and own-x8 teacher that training is meant to close
(0.41-0.86), and RLFN-S x2's student ended further from its teacher than its base, on training images too (0.348 ->
0.455 grey levels). One change to the recipe: training in fp32 (``optim.amp: none``) instead of under bf16
autocast. (A first version of this part, changing the learning rate instead, was replaced before any of its runs.)
Runs (``<run>_fp32``): the x4 bases with HAESR, the teacher with the most headroom, and RLFN-S x2 with its own x8:
4 runs, about 3 hours here. Rule: a base's verdict is taken on its run, of either part, whose student gains most on
the held-out images.

Machine note (2026-12-02): a session ended with ``rlfn_s_x2_self_x8_fp32`` at step 925 of 1500 and the next
session began on a fresh machine, an Intel Xeon (family 6 model 167, AMX-bf16; sessions do not choose their CPU),
where the run started again from step 0; its result records that machine (each result records its own).

    python studies/any_model/run.py [NAME ...]   # references, then runs (default all); results/*.json; resumable
    python studies/any_model/run.py --table      # the results as the markdown table docs/results.md carries

Results land in ``results/<name>.json`` (atomically; an existing file counts as done).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import yaml

from dsclora.devices import cpu_model
from dsclora.fs import atomic_write
from dsclora.measure.evaluate import evaluate_dataset
from dsclora.measure.profiling import conv_statistics, count_parameters
from dsclora.models.ensemble import SelfEnsemble
from dsclora.train.config import load_config
from dsclora.train.loop import Trainer
from dsclora.weights.load import load

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SHARED = REPO.parent / "shared"
RESULTS = HERE / "results"
SPLIT = REPO / "runs" / "teacher_choice" / "split"  # made by studies/teacher_choice/run.py
SETS = ("Set5", "Set14", "B100")
HAESR = "configs/models/haesr.yaml"
BAR_DB = 0.03  # the bar on the held-out gain
BASES = {  # name: (spec file, scale)
    "spanv2": ("configs/models/spanv2.yaml", 4),
    "safmnv3": ("configs/models/safmnv3.yaml", 4),
    "rlfn": ("configs/models/rlfn.yaml", 4),
    "rlfn_s_x2": ("configs/models/rlfn_s_x2.yaml", 2),
}
PART1 = {  # name: (base, teacher or None for the base's own x8 ensemble)
    **{f"{base}_self_x8": (base, None) for base in BASES},
    **{f"{base}_haesr": (base, HAESR) for base, (_, scale) in BASES.items() if scale == 4},
}
PART2 = {f"{name}_fp32": PART1[name] for name in ("spanv2_haesr", "safmnv3_haesr", "rlfn_haesr", "rlfn_s_x2_self_x8")}
RUNS = PART1 | PART2
RECIPE = {
    "model": {"train": "lora", "lora": {"targets": [{"pattern": "*", "rank": 8, "alpha": 16}], "skip_head": True}},
    "data": {
        "train": [str(SPLIT / "train_bsd"), "../shared/data/train/T91"],
        "train_lr": ["../shared/data/train_lr_x4/SunHays80", "../shared/data/train_lr_x4/Wallpapers"],
        "val": [],
        "patch": 48,
        "batch": 32,
        "workers": 1,
    },
    "loss": {"rec": 0.0, "teacher": 1.0, "affinity": 0.0, "teacher_targets": "cached"},
    "optim": {
        "optimizer": "adam",
        "lr": 5.0e-4,
        "scheduler": "cosine",
        "min_lr": 0.0,
        "ema_decay": 0.995,
        "amp": "bf16",
    },
    "run": {"steps": 1500, "seed": 0, "log_every": 25, "val_every": 0, "checkpoint_every": 250, "threads": 2},
}


def config_of(name: str) -> dict:
    base, teacher = RUNS[name]
    config = json.loads(json.dumps(RECIPE))
    config["name"] = f"any_model_{name}"
    config["model"] |= {"base": BASES[base][0], "teacher": teacher}
    config["loss"]["teacher_ensemble"] = 1 if teacher else 8
    config["run"]["output"] = f"runs/any_model/{name}"
    if name in PART2:
        config["optim"]["amp"] = "none"
    return config


def measure(weights: str | Path, scale: int) -> dict:
    """Held-out and benchmark Y-PSNR, parameters and MACs (flop counter, 1x3x256x256) of one network."""
    loaded = load(str(weights))
    net = loaded.runnable()
    val = evaluate_dataset(net, SPLIT / "val", scale, progress=False)
    out = {"val": {"psnr_y": val["psnr_y"], "per_image_psnr_y": [r["psnr_y"] for r in val["per_image"]]}}
    for name in SETS:
        r = evaluate_dataset(net, SHARED / "data" / "benchmark" / name / f"x{scale}", scale, progress=False)
        out[name] = {"psnr_y": r["psnr_y"], "ssim_y": r["ssim_y"]}
    out["params"] = count_parameters(loaded.module)
    out["macs"] = conv_statistics(net, (1, loaded.in_channels, 256, 256))["macs"]
    return out


def ensemble_val(weights: str, scale: int) -> float:
    """Held-out Y-PSNR of a network's x8 self-ensemble: the headroom the x8 teacher offers."""
    net = SelfEnsemble(load(weights).runnable(), 8)
    with torch.inference_mode():
        return evaluate_dataset(net, SPLIT / "val", scale, progress=False)["psnr_y"]


def write(name: str, payload: dict) -> None:
    with atomic_write(RESULTS / f"{name}.json") as tmp:
        tmp.write_text(json.dumps(payload, indent=1))


def result(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def references() -> None:
    for base, (spec, scale) in BASES.items():
        if not result(f"ref_{base}"):
            payload = measure(spec, scale) | {"val_self_x8": ensemble_val(spec, scale)}
            write(f"ref_{base}", {"name": f"ref_{base}", "weights": spec, "machine": cpu_model(), **payload})
            print(f"ref_{base}: evaluated", flush=True)
    if not result("ref_haesr_x4"):
        val = evaluate_dataset(load(HAESR).runnable(), SPLIT / "val", 4, progress=False)["psnr_y"]
        write("ref_haesr_x4", {"name": "ref_haesr_x4", "weights": HAESR, "machine": cpu_model(), "val": val})


def run(name: str) -> None:
    if result(name):
        return
    path = HERE / "configs" / f"{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"# Written by studies/any_model/run.py.\n{yaml.safe_dump(config_of(name), sort_keys=False)}")
    config = load_config(path)
    run_dir = REPO / config.run.output
    start = time.time()
    resume = (run_dir / "latest.pt").exists()  # no checkpoint yet: the files of a cut-short start are replaced
    trainer = Trainer(config, resume=resume, overwrite=not resume, quiet=True)
    trainable = sum(p.numel() for p in trainer.trainable)
    summary = trainer.run()
    payload = {"name": name, "config": config.to_dict(), "machine": cpu_model(), "trainable": trainable}
    payload |= {"train_seconds": summary["seconds"], "files": summary["files"]}
    write(name, payload | measure(summary["final_model"], trainer.scale))
    print(f"{name}: done in {time.time() - start:.0f} s", flush=True)


def teacher_headroom(base: str, teacher: str | None) -> float:
    """The teacher's own held-out Y-PSNR over the base's: what the student could at most learn."""
    ref = result(f"ref_{base}")
    val = ref["val_self_x8"] if teacher is None else result("ref_haesr_x4")["val"]
    return val - ref["val"]["psnr_y"]


def _precision(got: dict) -> str:
    return "fp32" if got["config"]["optim"]["amp"] == "none" else got["config"]["optim"]["amp"]


def table() -> str:
    """Markdown: per run, the teacher's and the student's held-out gain, each benchmark set's change over its
    base, params and MACs."""
    lines = [
        "| base | teacher | training | teacher's held-out gain | student's held-out gain | Set5 | Set14 | B100 "
        "| params (base = student) | MACs (base = student) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, (base, teacher) in RUNS.items():
        got, ref = result(name), result(f"ref_{base}")
        if not got or not ref:
            continue
        change = {s: got[s]["psnr_y"] - ref[s]["psnr_y"] for s in SETS}
        same = got["params"] == ref["params"] and got["macs"] == ref["macs"]
        lines.append(
            f"| {base} | {'HAESR' if teacher else 'own x8'} | {_precision(got)} "
            f"| {teacher_headroom(base, teacher):+.4f} "
            f"| {got['val']['psnr_y'] - ref['val']['psnr_y']:+.4f} | "
            + " | ".join(f"{change[s]:+.3f}" for s in SETS)
            + f" | {got['params']:,} ({'same' if same else 'DIFFERS'}) | {got['macs'] / 1e9:.3f} G |"
        )
    return "\n".join(lines)


def verdicts() -> list[str]:
    """The docstring's rule per base whose part-1 runs have finished: its best run so far, the bar met or not."""
    out = []
    for base in BASES:
        names = [name for name, (b, _) in RUNS.items() if b == base and result(name)]
        pending = [name for name, (b, _) in RUNS.items() if b == base and not result(name)]
        if any(name in PART1 for name in pending):
            continue
        ref = result(f"ref_{base}")
        gain = {name: result(name)["val"]["psnr_y"] - ref["val"]["psnr_y"] for name in names}
        best = max(names, key=gain.get)
        got = result(best)
        losses = [
            f"{s} {got[s]['psnr_y'] - ref[s]['psnr_y']:+.3f}" for s in SETS if got[s]["psnr_y"] < ref[s]["psnr_y"]
        ]
        same = got["params"] == ref["params"] and got["macs"] == ref["macs"]
        failed = [f"held-out gain {gain[best]:+.4f} < +{BAR_DB}"] if gain[best] < BAR_DB else []
        failed += [f"a benchmark set lost ({', '.join(losses)})"] if losses else []
        failed += [] if same else ["parameters or MACs changed"]
        teacher = "HAESR" if RUNS[best][1] else "its own x8"
        out.append(
            f"- {base}: teacher {teacher}, {_precision(got)} training ({gain[best]:+.4f} dB held out); the bar is "
            + ("met" if not failed else f"not met: {'; '.join(failed)}")
            + (f" ({', '.join(pending)} yet to run)." if pending else ".")
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"runs in order (default: {', '.join(RUNS)})")
    parser.add_argument("--table", action="store_true", help="print the results table and stop")
    args = parser.parse_args()
    os.environ.setdefault("DSCLORA_WEIGHTS_DIR", str(SHARED / "weights"))
    os.chdir(REPO)  # specs and recipes name paths relative to the repository
    if args.table:
        print(table())
        return
    if not (SPLIT / "val").is_dir():
        raise SystemExit("run studies/teacher_choice/run.py first: it makes the held-out split")
    references()
    for name in args.names or RUNS:
        run(name)
    print(table())


if __name__ == "__main__":
    main()
