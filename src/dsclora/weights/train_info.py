"""A training state's record of its student (``model_info``: base source, training form, adapters), checked
whole before anything is built from it.

A training checkpoint may come from anywhere, and this record decides what gets allocated: every value is
type- and range-checked, and every adapter's rank is compared with the factors the file stores (their shapes
follow from the layer and the rank alone), so a hostile record can neither allocate gigabytes nor fail deep
inside torch. The base network's own sizes are checked by its source (``weights/sources``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from dsclora.errors import DscloraError
from dsclora.models.adapters import ADAPTERS, factor_shapes

KEYS = ("source", "train_form", "adapters")
ADAPTER_KEYS = ("rank", "alpha", "dropout")
FACTORS = ("lora_A", "lora_B")


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _checked_adapter(name: object, values: object, label: str) -> dict[str, float]:
    where = f"{label}: model_info.adapters[{name!r}]"
    if not isinstance(name, str) or not name:
        raise DscloraError(f"{where}: an adapter is named by its layer (a non-empty string)")
    if not isinstance(values, Mapping):
        raise DscloraError(f"{where} must be a mapping of rank, alpha and dropout, got {type(values).__name__}")
    unknown = sorted(map(str, set(values) - set(ADAPTER_KEYS)))
    if unknown or "rank" not in values or "alpha" not in values:
        raise DscloraError(f"{where} must hold rank, alpha and optionally dropout, got keys {sorted(map(str, values))}")
    rank, alpha, dropout = values["rank"], values["alpha"], values.get("dropout", 0.0)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise DscloraError(f"{where}: rank must be a whole number >= 1, got {rank!r}")
    if not _number(alpha) or alpha <= 0:
        raise DscloraError(f"{where}: alpha must be a finite number > 0, got {alpha!r}")
    if not _number(dropout) or not 0 <= dropout < 1:
        raise DscloraError(f"{where}: dropout must be a number in [0, 1), got {dropout!r}")
    return {"rank": rank, "alpha": float(alpha), "dropout": float(dropout)}


def checked_info(info: object, label: str) -> dict:
    """``info`` with its structure and values checked (one-line ``DscloraError`` otherwise); the base source's
    contents are left to the source that rebuilds it."""
    if not isinstance(info, Mapping):
        raise DscloraError(
            f"{label}: its record of the network (model_info) must be a mapping, got {type(info).__name__}"
        )
    if sorted(map(str, info)) != sorted(KEYS):
        raise DscloraError(
            f"{label}: model_info must hold exactly {', '.join(KEYS)}; it holds {sorted(map(str, info))}"
        )
    source, train_form, adapters = info["source"], info["train_form"], info["adapters"]
    if not isinstance(source, Mapping) or not isinstance(source.get("kind"), str):
        raise DscloraError(f"{label}: model_info.source must be a mapping naming its kind")
    if not isinstance(train_form, bool):
        raise DscloraError(f"{label}: model_info.train_form must be true or false, got {train_form!r}")
    if not isinstance(adapters, Mapping):
        raise DscloraError(
            f"{label}: model_info.adapters must be a mapping of layer names, got {type(adapters).__name__}"
        )
    checked = {name: _checked_adapter(name, values, label) for name, values in adapters.items()}
    return {"source": dict(source), "train_form": train_form, "adapters": checked}


def check_adapters_fit(module: nn.Module, adapters: Mapping[str, Mapping], state: Mapping, label: str) -> None:
    """Every recorded adapter names a Conv2d / Linear of ``module`` and its rank gives exactly the factor shapes
    ``state`` stores; checked before any adapter is built, so a recorded rank of a billion allocates nothing."""
    layers = dict(module.named_modules())
    for name, values in adapters.items():
        layer = layers.get(name)
        if type(layer) not in ADAPTERS:
            raise DscloraError(f"{label}: records an adapter on {name!r}, which is no Conv2d / Linear of its network")
        for factor, shape in zip(FACTORS, factor_shapes(layer, values["rank"]), strict=True):
            stored = state.get(f"{name}.{factor}")
            if not isinstance(stored, torch.Tensor):
                raise DscloraError(f"{label}: records an adapter on {name!r} but stores no {name}.{factor}")
            if tuple(stored.shape) != shape:
                raise DscloraError(
                    f"{label}: records rank {values['rank']} for {name}, which needs {name}.{factor} of shape "
                    f"{shape}, but the file stores {tuple(stored.shape)}"
                )
    stored_names = {k.rsplit(".", 1)[0] for k in state if k.rsplit(".", 1)[-1] in FACTORS}
    stray = sorted(stored_names - set(adapters))
    if stray:
        raise DscloraError(f"{label}: stores adapter factors for {stray[0]} but records no adapter there")
