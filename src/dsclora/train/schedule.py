"""Optimiser and learning-rate schedule of a recipe."""

from __future__ import annotations

import math

import torch
from torch import nn

from dsclora.train.config import OptimConfig


def make_optimizer(o: OptimConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)


def lr_factor(o: OptimConfig, total: int, step: int) -> float:
    """Multiplier of the base lr at ``step`` of ``total``: linear warm-up, then cosine / multistep / constant."""
    if o.warmup_steps and step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    if o.scheduler == "multistep":
        return o.gamma ** sum(step >= m for m in o.milestones)
    if o.scheduler == "cosine":
        span = max(total - o.warmup_steps, 1)
        progress = min((step - o.warmup_steps) / span, 1.0)
        floor = o.min_lr / o.lr
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0
