"""Time per training step and peak memory, side by side in one run, for three ways to adapt SPAN-tiny:

1. ``finetune``  plain fine-tuning of every weight (deploy-form SPAN-tiny, L1);
2. ``lora``      the ConvLoRA student without distillation (20 adapted convs, L1);
3. ``dsclora``   the full recipe: ConvLoRA + frozen teacher + L1(SR, teacher SR) + spatial affinity on 7 maps.

Steps run round-robin (one of each, repeated) so machine drift hits all three alike; the median is reported
with the ratio to ``finetune``. Peak memory is measured for the first step, each variant in a fresh process
(a warm allocator would hide it): the resident-set high-water mark (/proc/self/status VmHWM) over the RSS
before the step, or CUDA max_memory_allocated on a GPU.

    python benchmarks/train_step.py [--batch 8] [--patch 48] [--steps 6] [--device cpu] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from dsclora.profiling import reset_peak_rss, rss_kib
from dsclora.train.config import DataConfig, LossConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from dsclora.train.data import PatchDataset, training_images
from dsclora.train.loop import Trainer
from dsclora.utils import atomic_write

SHARED = Path(__file__).resolve().parents[2] / "shared"
TRAIN_DIR = SHARED / "data" / "train" / "BSD200"
NAMES = ("finetune", "lora", "dsclora")


def variant(name: str, args: argparse.Namespace) -> TrainConfig:
    if name == "finetune":
        model = ModelConfig(arch="span", init="span-tiny", form="deploy", scale=4)
        loss = LossConfig(rec=1.0, teacher=0.0, affinity=0.0)
    elif name == "lora":
        model = ModelConfig(arch="dsclora", base="span-tiny", scale=4)
        loss = LossConfig(rec=1.0, teacher=0.0, affinity=0.0)
    else:
        model = ModelConfig(arch="dsclora", base="span-tiny", scale=4)
        loss = LossConfig(affinity_chunk=args.chunk)
    return TrainConfig(
        name=name,
        model=model,
        data=DataConfig(train=[str(TRAIN_DIR)], patch=args.patch, batch=args.batch),
        loss=loss,
        optim=OptimConfig(lr=1e-4, ema_decay=0.999),
        run=RunConfig(steps=10**6, output=f"/tmp/dsclora-bench-{name}", device=args.device),
    )


def make_batches(args: argparse.Namespace, count: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    files, _ = training_images([str(TRAIN_DIR)], args.patch * 4 + 3)
    data = PatchDataset(files, 4, args.patch, seed=0)
    batches = []
    for i in range(count):
        pairs = [data[i * args.batch + k] for k in range(args.batch)]
        lr, hr = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
        batches.append((lr.to(device), hr.to(device)))
    return batches


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return (rss_kib("VmHWM") or 0) / 1024


def first_step_memory(name: str, args: argparse.Namespace) -> float:
    """Peak memory (MiB) of one training step in this (fresh) process, over the memory before it."""
    trainer = Trainer(variant(name, args), quiet=True)
    ((lr, hr),) = make_batches(args, 1, trainer.device)
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = (rss_kib("VmRSS") or 0) / 1024
        reset_peak_rss()
    trainer.train_step(lr, hr)
    return peak_mib(trainer.device) - base


def memory_in_subprocess(name: str, argv: list[str]) -> float:
    proc = subprocess.run(
        [sys.executable, __file__, "--memory-of", name, *argv], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return float(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--patch", type=int, default=48, help="LR patch side")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant (after 1 warm-up)")
    parser.add_argument("--chunk", type=int, default=1024, help="affinity rows per block")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default="benchmarks/results/train_step.json")
    parser.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)  # child mode: print one number
    args = parser.parse_args()
    os.environ.setdefault("DSCLORA_WEIGHTS_DIR", str(SHARED / "weights"))
    if args.memory_of:
        print(first_step_memory(args.memory_of, args))
        return
    child_argv = ["--batch", str(args.batch), "--patch", str(args.patch), "--chunk", str(args.chunk)]
    child_argv += ["--device", args.device]

    trainers = {n: Trainer(variant(n, args), quiet=True) for n in NAMES}
    device = trainers["finetune"].device
    batches = make_batches(args, args.steps + 1, device)
    times: dict[str, list[float]] = {n: [] for n in NAMES}
    for i, (lr, hr) in enumerate(batches):
        for name in NAMES:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            trainers[name].train_step(lr, hr)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i > 0:  # the first round is warm-up
                times[name].append(time.perf_counter() - start)
    peaks = {name: memory_in_subprocess(name, child_argv) for name in NAMES}

    reference = statistics.median(times["finetune"])
    result = {
        "machine": platform.processor() or platform.machine(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "batch": args.batch,
        "lr_patch": args.patch,
        "timed_steps": args.steps,
        "variants": {
            name: {
                "sec_per_step_median": statistics.median(times[name]),
                "sec_per_step_min": min(times[name]),
                "ratio_to_finetune": statistics.median(times[name]) / reference,
                "first_step_peak_memory_mib": peaks[name],
                "trainable_params": sum(p.numel() for p in trainers[name].trainable),
            }
            for name in NAMES
        },
    }
    print(f"{'variant':<10}{'s/step':>9}{'x finetune':>12}{'peak MiB':>10}{'trainable':>11}")
    for name, row in result["variants"].items():
        print(
            f"{name:<10}{row['sec_per_step_median']:>9.3f}{row['ratio_to_finetune']:>12.3f}"
            f"{row['first_step_peak_memory_mib']:>10.0f}{row['trainable_params']:>11,}"
        )
    with atomic_write(args.json) as tmp:
        tmp.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
