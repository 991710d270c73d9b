"""The one way from a ``--weights`` value to a ready model: a descriptor with everything callers need.

Names and files resolve through ``registry``; ``default`` (or no value) is the embedded model; ``bicubic`` is
MATLAB bicubic as a pseudo-model and needs a scale. Networks come back in deploy form (same function, plain
convs: the fast form), in eval mode, on the asked device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dsclora.errors import DscloraError
from dsclora.models.bicubic import BICUBIC_RADIUS, Bicubic
from dsclora.models.forms import to_deploy
from dsclora.models.span import SPAN
from dsclora.weights.checkpoints import ModelSpec, load_model
from dsclora.weights.registry import DEFAULT, resolve

BICUBIC = "bicubic"


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to run, with what tiling, evaluation and export need to know about it."""

    module: nn.Module  # a deploy-form SPAN, or Bicubic
    scale: int
    receptive_radius: int  # LR pixels each side that reach an output pixel: the exact tile overlap
    label: str  # as the user named it
    spec: ModelSpec | None = None  # None for bicubic
    path: Path | None = None

    @property
    def span(self) -> SPAN:
        """The network (``load(..., network=True)`` refuses bicubic before this is ever asked for)."""
        if not isinstance(self.module, SPAN):
            raise DscloraError(f"--weights {self.label}: this command needs a network, not bicubic")
        return self.module


def network_file(weights: str | None) -> Path:
    """The file a network's ``--weights`` value names (``None``: the embedded default); bicubic is refused, as
    no file holds it. Commands that must not write over their inputs ask this before loading anything."""
    if weights == BICUBIC:
        raise DscloraError("--weights bicubic: this command needs a network, not bicubic")
    return resolve(weights or DEFAULT)


def load(
    weights: str | None, device: torch.device | str = "cpu", scale: int | None = None, network: bool = False
) -> LoadedModel:
    """Resolve and load ``weights`` (``None``: the embedded default); ``scale`` must match the model's if given.

    ``network=True`` is for commands that need a real network (profile, export): bicubic is refused.
    """
    label = weights or DEFAULT
    if label == BICUBIC and not network:
        if scale is None:
            raise DscloraError("--weights bicubic needs --scale")
        return LoadedModel(Bicubic(scale).to(device), scale, BICUBIC_RADIUS, label)
    path = network_file(label)
    model, spec = load_model(path, device)
    if spec.arch != "span" or spec.form != "deploy":
        model = to_deploy(model).eval()
    if scale is not None and scale != spec.span.scale:
        raise DscloraError(f"--weights {label} is a x{spec.span.scale} model, but --scale {scale} was asked for")
    return LoadedModel(model, spec.span.scale, spec.span.receptive_radius, label, spec, path)
