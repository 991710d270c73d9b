"""Write configs/experiments/*.yaml: one recipe per run of the CPU-scale DSCLoRA study (issue: reproduce the gain).

Every run fine-tunes an official x4 SPAN on BSD200 + T91 with the same budget: 500 steps of batch 8 on 24x24
LR patches, Adam 2e-4 with 50 warm-up steps then cosine, EMA 0.99, no validation during training (the
benchmark sets are only used once, for the final evaluation, so nothing is tuned on them). For a given seed
every variant sees the same patches in the same order (the order depends only on ``run.seed``).

    python benchmarks/make_experiments.py     # rewrites the folder
"""

from __future__ import annotations

from pathlib import Path

import yaml

OUT = Path(__file__).resolve().parents[1] / "configs" / "experiments"
SEEDS = (0, 1, 2)
COMMON = {
    "data": {
        "train": ["../shared/data/train/BSD200", "../shared/data/train/T91"],
        "val": [],
        "patch": 24,
        "batch": 8,
        "workers": 0,
    },
    "optim": {
        "optimizer": "adam",
        "lr": 2.0e-4,
        "scheduler": "cosine",
        "warmup_steps": 50,
        "min_lr": 1.0e-6,
        "grad_clip": 1.0,
        "ema_decay": 0.99,
    },
    "run": {"steps": 500, "val_every": 0, "checkpoint_every": 250, "log_every": 10, "tensorboard": False, "threads": 2},
}
FINETUNE = {
    "model": {"arch": "span", "init": "span-tiny", "form": "deploy", "scale": 4},
    "loss": {"rec": 1.0, "teacher": 0.0, "affinity": 0.0},
}
LORA = {
    "model": {"arch": "dsclora", "base": "span-tiny", "scale": 4},
    "loss": {"rec": 1.0, "teacher": 0.0, "affinity": 0.0},
}
DSCLORA = {
    "model": {"arch": "dsclora", "base": "span-tiny", "scale": 4},
    "loss": {"rec": 0.5, "teacher": 0.5, "affinity": 10.0},
}


def merged(*parts: dict) -> dict:
    out: dict = {}
    for part in parts:
        for key, value in part.items():
            out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def runs() -> dict[str, tuple[str, dict]]:
    table: dict[str, tuple[str, dict]] = {}
    for seed in SEEDS:
        table[f"ii_finetune_s{seed}"] = ("(ii) plain fine-tuning, L1", merged(FINETUNE, {"run": {"seed": seed}}))
        table[f"iii_lora_s{seed}"] = ("(iii) ConvLoRA, L1 only", merged(LORA, {"run": {"seed": seed}}))
        table[f"iv_dsclora_s{seed}"] = ("(iv) DSCLoRA", merged(DSCLORA, {"run": {"seed": seed}}))
        table[f"ch28_dsclora_s{seed}"] = (
            "(iv) DSCLoRA on SPAN ch28",
            merged(DSCLORA, {"model": {"base": "span-ch28"}, "run": {"seed": seed}}),
        )
        table[f"ch28_lora_s{seed}"] = (
            "(iii) ConvLoRA, L1 only, on SPAN ch28",
            merged(LORA, {"model": {"base": "span-ch28"}, "run": {"seed": seed}}),
        )
    for rank in (4, 8):
        table[f"abl_rank{rank}_s0"] = (
            f"(iv) with block rank {rank}",
            merged(DSCLORA, {"model": {"block_rank": rank, "block_alpha": 2.0 * rank}, "run": {"seed": 0}}),
        )
    for lam in (0.0, 1.0):
        table[f"abl_lambda3_{lam:g}_s0"] = (
            f"(iv) with λ3 = {lam:g}",
            merged(DSCLORA, {"loss": {"affinity": lam}, "run": {"seed": 0}}),
        )
    for lam in (0.0, 0.1):
        # λ1 = λ2 with two L1 terms leaves the pixel loss flat between the teacher's output and HR: a student
        # that starts at its teacher gets no push towards HR. A smaller λ2 shows how much that matters.
        table[f"abl_lambda2_{lam:g}_s0"] = (
            f"(iv) with λ2 = {lam:g}",
            merged(DSCLORA, {"loss": {"teacher": lam}, "run": {"seed": 0}}),
        )
    table["abl_layers_tail_s0"] = (
        "(iv) with L_AD on block_6 and conv_2 only",
        merged(DSCLORA, {"loss": {"affinity_layers": ["block_6", "conv_2"]}, "run": {"seed": 0}}),
    )
    table["abl_layers_odd_s0"] = (
        "(iv) with L_AD on blocks 1, 3, 5",
        merged(DSCLORA, {"loss": {"affinity_layers": ["block_1", "block_3", "block_5"]}, "run": {"seed": 0}}),
    )
    return table


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for stale in OUT.glob("*.yaml"):
        stale.unlink()
    for name, (title, body) in runs().items():
        config = merged(COMMON, body, {"name": name, "run": {"output": f"runs/experiments/{name}"}})
        text = f"# {title}. Written by benchmarks/make_experiments.py (budget and protocol in its docstring).\n"
        (OUT / f"{name}.yaml").write_text(text + yaml.safe_dump(config, sort_keys=False))
    print(f"wrote {len(runs())} configs to {OUT}")


if __name__ == "__main__":
    main()
