"""Exponential moving average of a model's floating-point state (the weights BasicSR calls ``params_ema``)."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """``ema = decay · ema + (1 - decay) · current`` after every optimiser step, for every float tensor.

    Frozen tensors never change, so their average stays equal to them; integer buffers are copied.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for key, value in model.state_dict().items():
            avg = self.state[key]
            if value.is_floating_point():
                avg.mul_(self.decay).add_(value.detach(), alpha=1.0 - self.decay)
            else:
                avg.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for key, value in state.items():
            self.state[key].copy_(value)
