"""Choose the shipped recipe (teacher, student capacity, length) on held-out training images, never on a benchmark set.

Everything is judged on a validation split of the training pool: every 5th BSD200 image by name (40 images, the
BSDS300 *training* split, disjoint from B100) is held out; the student trains on the other 160, T91 and the 209
unlabelled LR photos, as the shipped recipe does. The student is SPAN-tiny; gains are over SPAN-tiny on the split.

Part 1 (issue #10; measured on a 2-thread Intel Xeon with AMX-bf16, results kept as they are). 1500 Adam steps,
batch 32 of 48x48 LR patches, lr 5e-4 cosine to 0, EMA 0.995, ConvLoRA ranks 8 / 16 on the paper's 20 convs,
L = L1(SR, cached teacher SR), seed 0, 2 threads:
- ``tiny_fp32``: teacher SPAN-tiny x8, fp32; ``ch28_fp32``: SPAN ch28 x8, fp32; ``ch28_bf16``: the same in bf16.
Rules then: (1) the teacher whose fp32 student gains most; (2) bf16 if it keeps >= 90 % of fp32's gain; (3) a run
of about 2.5 hours of that CPU. Outcome: SPAN ch28 x8, bf16, 16,000 steps (the model shipped until issue #19).

Parts 2-4 (issue #19), written before any of their runs, on one machine: 2 threads of an AMD EPYC, family 25
model 17 (Zen 4, native AVX512-BF16). Every run is part 1's ``ch28_bf16`` with one change.

Part 2, the teacher (targets single-pass unless named x8; every target cached once per training image):
- ``t_ch28x8``: SPAN ch28's x8 self-ensemble (part 1's choice, re-run here so parts 2-4 share one CPU);
- ``t_haesr``: HAESR (NTIRE 2026 ESR kit, team 06; ``configs/models/haesr.yaml``; 353 k parameters);
- ``t_craft``: CRAFT (NTIRE 2024 ESR kit, team 34; loaded by spandrel; 753 k parameters);
- ``t_haesr+craft``: the mean of HAESR's and CRAFT's outputs;
- ``t_haesr_x8``: HAESR's x8 self-ensemble, only if its targets (8x HAESR's) are built within this session;
  otherwise it is reported as not run.
Rule T: the teacher is the candidate whose student gains most on the split; a candidate within 0.005 dB of that
best gain whose targets are cheaper to build (fewer network forwards per image) wins instead.

Part 3, the student's capacity at zero inference cost, with part 2's teacher (same budget; ``c_r8`` is part 2's
run of that teacher):
- ``c_r16``: ranks 16 / 32 (α = 2·rank) on the paper's 20 convs;
- ``c_full_rank``: rank 26 on the 20 convs (loralib's (out·k, in·k) ΔW is then unrestricted for C = 26);
- ``c_all_convs``: ranks 8 / 16 on every conv (conv_1 and conv_cat too);
- ``c_trainform``: full fine-tuning of the Conv3XC training form (every branch weight learns; collapsed exactly
  to the same 26-channel deploy network), lr 1e-4 (the CPU study's fine-tuning rate), EMA 0.995.
Rule C: the option whose student gains most; an option within 0.005 dB of the best with fewer trainable
parameters wins instead.

Part 4, the length, with parts 2 and 3's recipe: ``l_3000`` and ``l_6000`` (3,000 and 6,000 steps, each with its
own complete cosine schedule) beside the 1,500-step run. Rule L: if the 6,000-step student gains at least 0.005 dB
more than the 3,000-step one, the shipped run takes as many steps (a multiple of 1,000) as 3.5 hours of this CPU
allow at the step time measured in ``l_6000``; otherwise it takes 6,000 steps. The shipped run trains on the whole
pool (the 40 held-out images too), as before.

Amendment, written before ``t_craft``'s run (2026-12-02): sessions do not choose their CPU, and each starts on a
fresh machine (a run cannot continue into the next session), so "one machine" cannot hold for all of parts 2-4:
``t_craft`` runs on 2 threads of an Intel Xeon (family 6 model 167, AMX-bf16). Every result records its machine
and ``--decide`` prints it beside each gain. Where a rule compares runs from different CPU models and its outcome
rests on a margin below 2 x TIE_DB (0.01 dB), the two leading candidates are run again on one CPU model and the
rule applies to those runs.

    python studies/teacher_choice/run.py [NAME ...]   # references, then the named runs; results/*.json; resumable
    python studies/teacher_choice/run.py --decide     # applies rules T, C and L to the results and prints why

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
HAESR = "configs/models/haesr.yaml"
CRAFT = "../shared/weights/ntire2024_team34_craft.pth"
TIE_DB = 0.005
SHIPPED_HOURS = 3.5
REFERENCES = {  # name: the (weights, self-ensemble size) whose outputs are averaged
    "ref_span-tiny": [("span-tiny", 1)],
    "ref_span-tiny_x8": [("span-tiny", 8)],
    "ref_span-ch28": [("span-ch28", 1)],
    "ref_span-ch28_x8": [("span-ch28", 8)],
    "ref_span-tiny_x8+ch28_x8": [("span-tiny", 8), ("span-ch28", 8)],
    "ref_dscf": [("dscf", 1)],
    "ref_haesr": [(HAESR, 1)],
    "ref_craft": [(CRAFT, 1)],
    "ref_haesr+craft": [(HAESR, 1), (CRAFT, 1)],
}
PAPER_20 = ["block_*.c?_r.eval_conv", "conv_2.eval_conv", "upsampler.0"]


def targets(block_rank: int, tail_rank: int, patterns: list[str] = PAPER_20) -> list[dict]:
    """ConvLoRA rules: block convs at ``block_rank``, every other pattern at ``tail_rank``; α = 2·rank."""
    return [
        {"pattern": p, "rank": r, "alpha": 2 * r}
        for p, r in ((p, block_rank if p.startswith("block_") else tail_rank) for p in patterns)
    ]


COMMON = {
    "model": {"base": "span-tiny", "lora": {"targets": targets(8, 16)}},
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
# Part 1 (teacher, amp); parts 2-4 are changes to ch28_bf16's config (dotted keys)
PART1 = {"tiny_fp32": (None, "none"), "ch28_fp32": ("span-ch28", "none"), "ch28_bf16": ("span-ch28", "bf16")}
TEACHERS = {  # part 2: name -> (teacher, ensemble, forwards per image to build its targets)
    "t_ch28x8": ("span-ch28", 8, 8),
    "t_haesr": (HAESR, 1, 1),
    "t_craft": (CRAFT, 1, 1),
    "t_haesr+craft": ([HAESR, CRAFT], 1, 2),
    "t_haesr_x8": (HAESR, 8, 8),
}
CAPACITY = {  # part 3: name -> changes
    "c_r16": {"model.lora.targets": targets(16, 32)},
    "c_full_rank": {"model.lora.targets": targets(26, 26)},
    "c_all_convs": {"model.lora.targets": targets(8, 16, ["conv_1.eval_conv", "conv_cat", *PAPER_20])},
    "c_trainform": {
        "model.train": "full",
        "model.train_form": True,
        "model.lora.targets": [],
        "optim.lr": 1.0e-4,
    },
}
LENGTHS = {"l_3000": 3000, "l_6000": 6000}


def make_split() -> None:
    """Every HOLD_OUT_EVERY-th BSD200 image (by name) into val/, the rest into train_bsd/, as symlinks."""
    images = list_images(SHARED / "data" / "train" / "BSD200" / "HR")
    for sub in ("train_bsd", "val"):
        (SPLIT / sub).mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(images):
        link = SPLIT / ("val" if i % HOLD_OUT_EVERY == 0 else "train_bsd") / path.name
        if not link.exists():
            link.symlink_to(path)


def result(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def gain(name: str) -> float:
    return result(name)["val"]["psnr_y"] - result("ref_span-tiny")["val"]["psnr_y"]


def apply(config: dict, changes: dict) -> dict:
    for key, value in changes.items():
        *sections, last = key.split(".")
        node = config
        for section in sections:
            node = node[section]
        node[last] = value
    return config


def _pending(names: list[str]) -> str:
    """What a rule decided on partial results says: the candidates still to run (t_haesr_x8 is optional)."""
    waiting = [n for n in names if not result(n)]
    return f" so far ({', '.join(waiting)} yet to run)" if waiting else ""


def rule_t() -> tuple[str, str]:
    """(run name, why) of part 2's teacher by rule T; every candidate that ran counts."""
    done = {n: gain(n) for n in TEACHERS if result(n)}
    best = max(done.values())
    close = [n for n, g in done.items() if g >= best - TIE_DB]
    chosen = min(close, key=lambda n: (TEACHERS[n][2], -done[n]))
    gains = ", ".join(f"{n} {g:+.4f} ({result(n)['machine']})" for n, g in done.items())
    return chosen, f"rule T over {gains} dB: {chosen}" + _pending([n for n in TEACHERS if n != "t_haesr_x8"])


def rule_c() -> tuple[str, str]:
    """(run name, why) of part 3's capacity by rule C; ``c_r8`` is part 2's chosen run."""
    teacher, _ = rule_t()
    done = {"c_r8": (gain(teacher), result(teacher)["trainable"])}
    done |= {n: (gain(n), result(n)["trainable"]) for n in CAPACITY if result(n)}
    best = max(g for g, _ in done.values())
    chosen = min((n for n, (g, _) in done.items() if g >= best - TIE_DB), key=lambda n: done[n][1])
    gains = ", ".join(f"{n} {g:+.4f} ({p:,} trainable)" for n, (g, p) in done.items())
    return chosen, f"rule C over {gains} dB: {chosen}" + _pending(list(CAPACITY))


def rule_l() -> tuple[int, str]:
    """(shipped steps, why) by rule L."""
    g3, g6 = gain("l_3000"), gain("l_6000")
    seconds = result("l_6000")["train_seconds"] / 6000
    if g6 - g3 >= TIE_DB:
        steps = int(SHIPPED_HOURS * 3600 / seconds) // 1000 * 1000
        return (
            steps,
            f"rule L: 6000 steps {g6:+.4f} vs 3000 {g3:+.4f} dB, still growing: {steps} steps at {seconds:.2f} s",
        )
    return 6000, f"rule L: 6000 steps {g6:+.4f} vs 3000 {g3:+.4f} dB, flat: 6000 steps"


def config_of(name: str) -> dict:
    config = json.loads(json.dumps(COMMON))
    if name in PART1:
        teacher, amp = PART1[name]
        config["model"]["teacher"] = teacher
        config["optim"]["amp"] = amp
    else:
        config["model"]["teacher"] = "span-ch28"
        config["optim"]["amp"] = "bf16"
        if name in TEACHERS:
            teacher, ensemble, _ = TEACHERS[name]
            apply(config, {"model.teacher": teacher, "loss.teacher_ensemble": ensemble})
        else:
            chosen, _ = rule_t()
            apply(config, {"model.teacher": TEACHERS[chosen][0], "loss.teacher_ensemble": TEACHERS[chosen][1]})
            if name in CAPACITY:
                apply(config, CAPACITY[name])
            else:
                capacity, _ = rule_c()
                if capacity != "c_r8":
                    apply(config, CAPACITY[capacity])
                apply(config, {"run.steps": LENGTHS[name]})
    config["name"] = f"teacher_choice_{name}"
    config["run"]["output"] = f"runs/teacher_choice/{name}"
    return config


def val_psnr(members: list[tuple[str | Path, int]]) -> dict:
    """Y-PSNR / SSIM on the validation split of the mean output of ``members`` (weights, self-ensemble size)."""
    nets = [SelfEnsemble(load(str(weights)).runnable(), ensemble) for weights, ensemble in members]
    r = evaluate_dataset(lambda x: sum(net(x) for net in nets) / len(nets), SPLIT / "val", 4, progress=False)
    return {"psnr_y": r["psnr_y"], "ssim_y": r["ssim_y"], "per_image_psnr_y": [row["psnr_y"] for row in r["per_image"]]}


def write(name: str, payload: dict) -> None:
    with atomic_write(RESULTS / f"{name}.json") as tmp:
        tmp.write_text(json.dumps(payload, indent=1))


def run(name: str) -> None:
    if result(name):
        return
    path = HERE / "configs" / f"{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"# Written by studies/teacher_choice/run.py.\n{yaml.safe_dump(config_of(name), sort_keys=False)}")
    config = load_config(path)
    run_dir = REPO / config.run.output
    start = time.time()
    resume = (run_dir / "latest.pt").exists()  # no checkpoint yet: the files of a cut-short start are replaced
    trainer = Trainer(config, resume=resume, overwrite=not resume, quiet=True)
    trainable = sum(p.numel() for p in trainer.trainable)
    summary = trainer.run()
    final = Path(summary["final_model"])
    write(
        name,
        {
            "name": name,
            "config": config.to_dict(),
            "machine": cpu_model(),
            "trainable": trainable,
            "train_seconds": summary["seconds"],
            "wall_seconds": time.time() - start,
            "val": val_psnr([(final, 1)]),
        },
    )
    print(f"{name}: done in {time.time() - start:.0f} s", flush=True)


def table() -> None:
    print(f"{'run':<26}{'val Y-PSNR':>12}{'gain':>9}")
    for path in sorted(RESULTS.glob("*.json")):
        print(f"{path.stem:<26}{result(path.stem)['val']['psnr_y']:>12.4f}{gain(path.stem):>+9.4f}")


def decide() -> None:
    for rule in (rule_t, rule_c, rule_l):
        try:
            print(rule()[1])
        except (TypeError, KeyError, ValueError) as exc:  # a rule whose runs have not all finished
            print(f"{rule.__name__}: not decidable yet ({type(exc).__name__}: {exc})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="runs, in order (default: parts 2, 3 and 4 as decidable)")
    parser.add_argument("--decide", action="store_true", help="print the rules' outcome and stop")
    args = parser.parse_args()
    os.environ.setdefault("DSCLORA_WEIGHTS_DIR", str(SHARED / "weights"))
    os.chdir(REPO)  # the recipes name ../shared relative to the repository
    if args.decide:
        decide()
        return
    make_split()
    for name, members in REFERENCES.items():
        if not result(name):
            write(name, {"name": name, "members": members, "machine": cpu_model(), "val": val_psnr(members)})
            print(f"{name}: evaluated", flush=True)
    default = [n for n in TEACHERS if n != "t_haesr_x8"] + [*CAPACITY, *LENGTHS]  # t_haesr_x8 only when named
    for name in args.names or default:
        run(name)
    table()


if __name__ == "__main__":
    main()
