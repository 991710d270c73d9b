"""Time per training step and peak memory, side by side in one run, for the ways to adapt SPAN-tiny:

1. ``finetune``         plain fine-tuning of every weight (deploy-form SPAN-tiny, L1 to HR);
2. ``lora``             the ConvLoRA student (paper ranks), L1 to HR;
3. ``ensemble_cached``  the recommended recipe: ConvLoRA (ranks 8 / 16), L1 to the cached x8 self-ensemble target
                        (the target is part of the batch, computed before timing as the trainer does), fp32;
   ``ensemble_cached_bf16``  the same step under bf16 autocast, as the recipe trains (fast only where the
                        hardware has native bf16: the JSON names the CPU);
4. ``dsclora``          the paper's recipe: ConvLoRA + online teacher + L1 to its output + L1 affinity on 7 maps;
5. ``dsclora_l2``       the same with the L2 affinity computed by C x C Gram products.

Steps run round-robin (one of each, repeated) so machine drift hits all alike; the median is reported with
the ratio to ``finetune`` (``ratios.ensemble_cached_vs_finetune`` is the recommended recipe's overhead). Peak
memory is measured for the first step, each variant in a fresh process: the resident-set high-water mark over
the RSS before the step, or CUDA max_memory_allocated on a GPU. The affinity loss alone (forward + backward on
the seven student maps of one batch) is timed for both distances too.

    python benchmarks/train_step.py [--batch 8] [--patch 48] [--steps 6] [--device cpu] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from dsclora.data.patches import PatchDataset, training_images
from dsclora.devices import device_name
from dsclora.fs import atomic_write
from dsclora.measure.profiling import current_memory, peak_memory, reset_peak_memory
from dsclora.train.config import (
    DataConfig,
    LoraConfig,
    LoraTarget,
    LossConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
)
from dsclora.train.loop import Trainer
from dsclora.train.losses import spatial_affinity_loss
from dsclora.train.teacher import TeacherTargets

SHARED = Path(__file__).resolve().parents[2] / "shared"
TRAIN_DIR = SHARED / "data" / "train" / "BSD200"
NAMES = ("finetune", "lora", "ensemble_cached", "ensemble_cached_bf16", "dsclora", "dsclora_l2")
IMAGES = 24  # training images the batches are cut from (their ensemble targets are computed once)
RECOMMENDED = [  # configs/dsclora_x4_ens.yaml's ranks
    LoraTarget("block_*.c?_r.eval_conv", 8, 16.0),
    LoraTarget("conv_2.eval_conv", 16, 32.0),
    LoraTarget("upsampler.0", 16, 32.0),
]


def variant(name: str, args: argparse.Namespace) -> TrainConfig:
    to_hr = LossConfig(rec=1.0, teacher=0.0, affinity=0.0)
    model = ModelConfig(base="span-tiny")
    if name == "finetune":
        model, loss = ModelConfig(base="span-tiny", train="full"), to_hr
    elif name == "lora":
        loss = to_hr
    elif name.startswith("ensemble_cached"):
        model = ModelConfig(base="span-tiny", lora=LoraConfig(targets=RECOMMENDED))
        loss = LossConfig(rec=0.0, teacher=1.0, affinity=0.0, teacher_ensemble=8, teacher_targets="cached")
    else:
        loss = LossConfig(affinity_chunk=args.chunk, affinity_distance="l2" if name == "dsclora_l2" else "l1")
    return TrainConfig(
        name=name,
        model=model,
        data=DataConfig(train=[str(TRAIN_DIR)], patch=args.patch, batch=args.batch),
        loss=loss,
        optim=OptimConfig(lr=1e-4, ema_decay=0.999, amp="bf16" if name.endswith("_bf16") else "none"),
        run=RunConfig(steps=10**6, output=tempfile.mkdtemp(prefix=f"dsclora-bench-{name}-"), device=args.device),
    )


def make_batches(trainer: Trainer, args: argparse.Namespace, count: int) -> list[dict[str, torch.Tensor]]:
    """``count`` batches of LR, HR and the cached ensemble target, the same for every variant."""
    images, _ = training_images([str(TRAIN_DIR)], [], args.patch, 4)
    data = PatchDataset(images[:IMAGES], 4, args.patch, seed=0)
    targets = TeacherTargets(trainer.teacher.runnable(), trainer.teacher.identity, 8, 4)
    data.set_targets(targets.get_all([data.lr_image(i) for i in range(len(data.images))], progress=False))
    batches = []
    for i in range(count):
        samples = [data[i * args.batch + k] for k in range(args.batch)]
        batches.append({key: torch.stack([s[key] for s in samples]).to(trainer.device) for key in samples[0]})
    return batches


def first_step_memory(name: str, args: argparse.Namespace) -> float:
    """Peak memory (MiB) of one training step in this (fresh) process, over the memory before it."""
    trainer = Trainer(variant(name, args), quiet=True)
    reference = trainer if trainer.teacher else Trainer(variant("ensemble_cached", args), quiet=True)
    (batch,) = make_batches(reference, args, 1)
    base = current_memory(trainer.device)
    reset_peak_memory(trainer.device)
    trainer.train_step(batch)
    return (peak_memory(trainer.device) - base) / 2**20


def memory_in_subprocess(name: str, argv: list[str]) -> float:
    proc = subprocess.run(
        [sys.executable, __file__, "--memory-of", name, *argv], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return float(proc.stdout.strip().splitlines()[-1])


def affinity_cost(trainer: Trainer, batch: dict[str, torch.Tensor], distance: str, repeats: int) -> float:
    """Median seconds of the affinity loss (forward + backward) over the seven maps of one batch."""
    with torch.no_grad():
        trainer.teacher.module(batch["lr"])
        trainer.student(batch["lr"])
    teacher_maps = list(trainer.teacher_tap.take().values())
    student_maps = list(trainer.student_tap.take().values())
    times = []
    for _ in range(repeats + 1):
        maps = [m.detach().requires_grad_() for m in student_maps]
        start = time.perf_counter()
        total = sum(spatial_affinity_loss(s, t, 1024, distance) for s, t in zip(maps, teacher_maps, strict=True))
        total.backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8, help="patches per step (default 8)")
    parser.add_argument("--patch", type=int, default=48, help="LR patch side (default 48)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant after one warm-up (default 6)")
    parser.add_argument("--chunk", type=int, default=1024, help="affinity rows per block for L1 (default 1024)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--json", default="benchmarks/results/train_step.json", help="where the figures go")
    parser.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)  # child mode: print one number
    args = parser.parse_args()
    if not TRAIN_DIR.is_dir():
        sys.exit(f"train_step: the training images are not at {TRAIN_DIR} (the workspace's ../shared/data)")
    os.environ.setdefault("DSCLORA_WEIGHTS_DIR", str(SHARED / "weights"))
    if args.memory_of:
        print(first_step_memory(args.memory_of, args))
        return
    child_argv = ["--batch", str(args.batch), "--patch", str(args.patch), "--chunk", str(args.chunk)]
    child_argv += ["--device", args.device]

    trainers = {n: Trainer(variant(n, args), quiet=True) for n in NAMES}
    device = trainers["finetune"].device
    batches = make_batches(trainers["ensemble_cached"], args, args.steps + 1)
    times: dict[str, list[float]] = {n: [] for n in NAMES}
    for i, batch in enumerate(batches):
        for name in NAMES:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            trainers[name].train_step(batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i > 0:  # the first round is warm-up
                times[name].append(time.perf_counter() - start)
    peaks = {name: memory_in_subprocess(name, child_argv) for name in NAMES}
    affinity = {d: affinity_cost(trainers["dsclora"], batches[0], d, args.steps) for d in ("l1", "l2")}

    median = {name: statistics.median(times[name]) for name in NAMES}
    result = {
        "machine": device_name(device),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "batch": args.batch,
        "lr_patch": args.patch,
        "timed_steps": args.steps,
        "ratios": {
            "ensemble_cached_vs_finetune": median["ensemble_cached"] / median["finetune"],
            "ensemble_cached_bf16_vs_finetune": median["ensemble_cached_bf16"] / median["finetune"],
            "affinity_l2_vs_l1": affinity["l2"] / affinity["l1"],
        },
        "affinity_loss_sec": affinity,
        "variants": {
            name: {
                "sec_per_step_median": median[name],
                "sec_per_step_min": min(times[name]),
                "ratio_to_finetune": median[name] / median["finetune"],
                "first_step_peak_memory_mib": peaks[name],
                "trainable_params": sum(p.numel() for p in trainers[name].trainable),
            }
            for name in NAMES
        },
    }
    print(f"{'variant':<22}{'s/step':>9}{'x finetune':>12}{'peak MiB':>10}{'trainable':>11}")
    for name, row in result["variants"].items():
        print(
            f"{name:<22}{row['sec_per_step_median']:>9.3f}{row['ratio_to_finetune']:>12.3f}"
            f"{row['first_step_peak_memory_mib']:>10.0f}{row['trainable_params']:>11,}"
        )
    print(f"affinity loss on 7 maps, fwd+bwd: l1 {affinity['l1']:.3f} s, l2 (Gram) {affinity['l2']:.4f} s")
    with atomic_write(args.json) as tmp:
        tmp.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
