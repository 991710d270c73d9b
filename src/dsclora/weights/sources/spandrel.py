"""Networks spandrel detects from their weights alone (CRAFT, SwinIR, HAT, DAT, OmniSR, ...), an optional extra:
``pip install 'dsclora[spandrel]'``.

The tensors are read by our weights-only reader; spandrel only detects the architecture and builds it. spandrel
imports torchvision for two architectures unrelated to super-resolution (LaMa, RestoreFormer). Where torchvision
is missing or cannot load (PyPI's build needs its matching CUDA torch), a stand-in module takes its place so that
every other architecture still loads; those two then fail with a clear error if ever used.
"""

from __future__ import annotations

import hashlib
import sys
import types
from collections.abc import Mapping
from pathlib import Path

from torch import nn

from dsclora.errors import DscloraError
from dsclora.models.descriptor import ModelDescriptor
from dsclora.weights.checkpoints import StateDict, read_checkpoint, write_state_dict

KIND = "spandrel"
HINT = "pip install 'dsclora[spandrel]' adds spandrel, which detects many more architectures"


def _torchvision_stand_in() -> None:
    """Put a torchvision whose two functions spandrel imports raise when called."""

    def unavailable(*_args, **_kwargs):
        raise DscloraError("this architecture needs torchvision, which cannot be imported here")

    functional = types.ModuleType("torchvision.transforms.functional")
    functional.InterpolationMode = types.SimpleNamespace(BILINEAR="bilinear", NEAREST="nearest")
    functional.rotate = functional.normalize = unavailable
    transforms = types.ModuleType("torchvision.transforms")
    transforms.functional = functional
    root = types.ModuleType("torchvision")
    root.transforms = transforms
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
    sys.modules |= {"torchvision": root, "torchvision.transforms": transforms}
    sys.modules["torchvision.transforms.functional"] = functional


def import_spandrel() -> types.ModuleType | None:
    """spandrel, or None where it is not installed."""
    try:
        import spandrel
    except ImportError as exc:
        if exc.name is not None and exc.name.startswith("spandrel"):
            return None
        _torchvision_stand_in()  # spandrel is there, torchvision is not
    except RuntimeError:  # a torchvision built for another torch fails at import ("operator ... does not exist")
        _torchvision_stand_in()
    else:
        return spandrel
    for name in [n for n in sys.modules if n.startswith("spandrel")]:
        del sys.modules[name]
    import spandrel

    return spandrel


def _detected(state: StateDict, source: str):
    """spandrel's descriptor for these tensors, or None when spandrel is absent or knows no such network."""
    spandrel = import_spandrel()
    if spandrel is None:
        return None
    try:
        found = spandrel.MAIN_REGISTRY.load(spandrel.canonicalize_state_dict(dict(state)))
    except spandrel.UnsupportedModelError:
        return None
    except Exception as exc:  # an architecture's loader choking on odd tensors: the file's problem
        raise DscloraError(
            f"{source}: spandrel recognised it but could not build it ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(found, spandrel.ImageModelDescriptor):
        raise DscloraError(
            f"{source}: spandrel sees a {found.purpose} model ({found.architecture.name}), not super-resolution"
        )
    return found


def _save(module: nn.Module, path: Path, train_form: bool = False) -> list[Path]:
    if train_form:
        raise DscloraError("spandrel networks have no training form dsclora knows")
    return [write_state_dict(module.state_dict(), path)]


def describe(state: StateDict, label: str, path: Path | None, weights_sha256: str) -> ModelDescriptor | None:
    """A descriptor for tensors spandrel recognises (None otherwise); input [0, 1], spandrel's size rules."""
    found = _detected(state, label)
    if found is None:
        return None
    arch = found.architecture.id
    required = found.size_requirements
    if required.square:
        raise DscloraError(f"{label}: {arch} needs square inputs, which dsclora does not support")
    module = found.model.eval()
    return ModelDescriptor(
        module=module,
        arch=arch,
        scale=found.scale,
        label=label,
        source={"kind": KIND, "weights": str(path) if path else None},
        identity=hashlib.sha256(f"spandrel|{arch}|{weights_sha256}".encode()).hexdigest(),
        in_channels=found.input_channels,
        out_channels=found.output_channels,
        size_multiple=max(required.multiple_of, 1),
        path=path,
        saver=_save,
    )


def rebuild(source: Mapping, label: str) -> ModelDescriptor:
    """The recorded weights file loaded again (a training state then loads its own weights into the module)."""
    weights = source.get("weights")
    if not isinstance(weights, str) or not Path(weights).is_file():
        raise DscloraError(f"{label}: the base weights it was trained from ({weights}) are gone")
    state, _ = read_checkpoint(weights)
    found = describe(state, label, Path(weights), "")
    if found is None:
        raise DscloraError(f"{label}: spandrel no longer recognises its base weights {weights}; {HINT}")
    return found
