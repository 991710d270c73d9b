"""From a ``--weights`` value to a ready model: registry names, files, the embedded default, ``bicubic``."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
from torch import nn

from dsclora.checkpoints import ModelSpec, load_model
from dsclora.errors import DscloraError
from dsclora.inference import Bicubic
from dsclora.reparam import to_deploy
from dsclora.weights import resolve

BICUBIC = "bicubic"
OFFICIAL_DEFAULT = "dscf"


def embedded_weights() -> Path | None:
    """The project's own trained weights shipped inside the package, if this build has them."""
    folder = resources.files("dsclora") / "assets"
    candidate = folder / "dsclora_x4.safetensors"
    return Path(str(candidate)) if candidate.is_file() else None


def default_weights() -> str:
    embedded = embedded_weights()
    return str(embedded) if embedded is not None else OFFICIAL_DEFAULT


def load_for_inference(
    weights: str | None, device: torch.device, scale: int | None = None
) -> tuple[nn.Module, int, ModelSpec | None]:
    """(model in eval mode on ``device``, its scale, its spec or None for bicubic)."""
    weights = weights or default_weights()
    if weights == BICUBIC:
        if scale is None:
            raise DscloraError("--weights bicubic needs --scale")
        return Bicubic(scale).to(device), scale, None
    model, spec = load_model(resolve(weights), device)
    if spec.arch != "span" or spec.form != "deploy":
        model = to_deploy(model).eval()  # same function, plain convs: the fast form
    if scale is not None and scale != spec.span.scale:
        raise DscloraError(f"{weights} is a x{spec.span.scale} model, but --scale {scale} was asked for")
    return model, spec.span.scale, spec
