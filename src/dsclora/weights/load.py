"""The one way from a ``--weights`` value to a ready model: a ``ModelDescriptor`` with everything callers need.

A value is ``default`` (or nothing: the embedded model), a registry name, a checkpoint file, a model spec file
(``.yaml``: any network as its own Python file plus weights), or ``bicubic`` (MATLAB bicubic as a pseudo-model;
it needs a scale). Checkpoints are tried against the sources in order: our SPAN loader, then spandrel where it
is installed; a training state (``latest.pt`` / ``best.pt``) rebuilds its student from what it recorded. Networks
come back merged (adapters folded, SPAN in its one-conv deploy form), in eval mode, on the asked device.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch

from dsclora.errors import DscloraError
from dsclora.fs import sha256_file
from dsclora.models.adapters import inject, rules_from_config
from dsclora.models.bicubic import BICUBIC_RADIUS, Bicubic
from dsclora.models.checks import checked_merge
from dsclora.models.descriptor import ModelDescriptor
from dsclora.weights.checkpoints import StateDict, read_checkpoint
from dsclora.weights.registry import DEFAULT, resolve
from dsclora.weights.sources import span, spandrel, specfile
from dsclora.weights.train_info import check_adapters_fit, checked_info

BICUBIC = "bicubic"
REBUILDERS = {"span": span.rebuild, specfile.KIND: specfile.rebuild, spandrel.KIND: spandrel.rebuild}


def network_file(weights: str | None) -> Path:
    """The file a network's ``--weights`` value names (``None``: the embedded default); bicubic is refused, as
    no file holds it. Commands that must not write over their inputs ask this before loading anything."""
    if weights == BICUBIC:
        raise DscloraError("--weights bicubic: this command needs a network, not bicubic")
    return resolve(weights or DEFAULT)


def input_files(weights: str | None) -> list[Path]:
    """Every file a network's ``--weights`` value reads: the checkpoint or spec file and its JSON card (``X.json``
    beside ``X.pth``), and a spec file's code and weights; none for bicubic. Commands check their outputs
    against these before anything is loaded, so no command writes over what it reads."""
    if weights == BICUBIC:
        return []
    path = network_file(weights)
    files = [path, path.with_suffix(".json")]
    if specfile.is_spec_file(path):
        spec = specfile.read_spec(path)
        files += [Path(spec["code"]), Path(spec["weights"])]
    return files


def rebuild(source: Mapping, label: str) -> ModelDescriptor:
    """A descriptor of the architecture ``source`` records (``ModelDescriptor.source``), with whatever weights
    that source starts from; the caller loads its own."""
    kind = source.get("kind") if isinstance(source, Mapping) else None
    if not isinstance(kind, str) or kind not in REBUILDERS:
        raise DscloraError(f"{label}: records a network of unknown kind {kind!r}")
    return REBUILDERS[kind](source, label)


def student_of(info: object, label: str, state: StateDict) -> ModelDescriptor:
    """The trainable network a training state records: its base architecture, in training form if it trained
    that way, with its adapters (weights not loaded). The record is checked whole, and its adapters against
    the factors in ``state``, before anything is built."""
    info = checked_info(info, label)
    base = rebuild(info["source"], label)
    module = base.module
    if info["train_form"]:
        if base.hooks.train_form is None:
            raise DscloraError(f"{label}: records a training form its architecture does not have")
        module = base.hooks.train_form(module)
    check_adapters_fit(module, info["adapters"], state, label)
    if info["adapters"]:
        inject(module, rules_from_config(info["adapters"]))
    return base.with_module(module)


def _from_train_state(state: StateDict, info: object, label: str) -> ModelDescriptor:
    student = student_of(info, label, state)
    try:
        student.module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise DscloraError(
            f"{label}: its weights do not fit the network it records ({str(exc).splitlines()[0]})"
        ) from None
    return student


def _from_checkpoint(path: Path, label: str, prefer_ema: bool) -> ModelDescriptor:
    """The network a checkpoint holds, as stored (adapters and training forms not yet merged)."""
    state, embedded = read_checkpoint(path, prefer_ema)
    digest = sha256_file(path)
    if embedded is not None and "train_state" in embedded:
        found = _from_train_state(state, embedded["train_state"], label)
        found.identity = hashlib.sha256(f"trained|{found.identity}|{digest}|{prefer_ema}".encode()).hexdigest()
        found.path = path
        return found
    model = span.build(state, embedded, str(path))
    if model is not None:
        return span.descriptor(model, label, path, digest)
    found = spandrel.describe(state, label, path, digest)
    if found is None:
        installed = spandrel.import_spandrel() is not None
        others = "" if installed else f"; {spandrel.HINT}"
        raise DscloraError(
            f"{path}: not a SPAN checkpoint{' and not an architecture spandrel knows' if installed else ''}: give other "
            f"networks as a model spec file (their Python file, class and weights; see `dsclora upscale --help`){others}"
        )
    return found


def load(
    weights: str | None,
    device: torch.device | str = "cpu",
    scale: int | None = None,
    network: bool = False,
    prefer_ema: bool = True,
    merged: bool = True,
) -> ModelDescriptor:
    """Resolve and load ``weights`` (``None``: the embedded default); ``scale`` must match the model's if given.

    ``network=True`` is for commands that need a real network (profile, export, train): bicubic is refused.
    ``prefer_ema``: a training state's EMA weights (else its raw weights). ``merged=False`` keeps adapters and
    training forms as stored (``convert`` and ``merge`` check the merge themselves).
    """
    label = weights or DEFAULT
    if label == BICUBIC and not network:
        if scale is None:
            raise DscloraError("--weights bicubic needs --scale")
        source = {"kind": BICUBIC, "scale": scale}
        return ModelDescriptor(
            Bicubic(scale).to(device), BICUBIC, scale, label, source, BICUBIC, receptive_radius=BICUBIC_RADIUS
        )
    path = network_file(label)
    if specfile.is_spec_file(path):
        found = specfile.load_spec(specfile.read_spec(path), label)
    else:
        found = _from_checkpoint(path, label, prefer_ema)
    for name, tensor in found.module.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise DscloraError(f"{path}: tensor {name} holds NaN or inf")
    if scale is not None and scale != found.scale:
        raise DscloraError(f"--weights {label} is a x{found.scale} model, but --scale {scale} was asked for")
    if merged:
        found.module = checked_merge(found.module, found.runnable)[0]
    found.module = found.module.to(device).eval()
    return found
