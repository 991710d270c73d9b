"""Checkpoint I/O, the only reader and writer of model files: official ``.pth`` files, BasicSR / Lightning / DDP
wrappers, our safetensors format, and ``dsclora train``'s training states (``latest.pt`` / ``best.pt``).

Every reader is weights-only: ``torch.load(weights_only=True)`` refuses pickled code, and safetensors holds
no code at all. Which architecture the tensors belong to is decided by the sources in ``weights/sources``; this
module only reads and writes tensors and the JSON config our safetensors files embed under ``"dsclora"``.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dsclora.errors import DscloraError
from dsclora.fs import atomic_write

StateDict = dict[str, torch.Tensor]
FileFormat = Literal["safetensors", "pth"]

WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net_g")
METADATA_KEY = "dsclora"
TRAIN_STATE_FORMAT = "dsclora-train-state/2"
SUFFIXES: dict[str, FileFormat] = {".safetensors": "safetensors", ".pth": "pth", ".pt": "pth"}
EXPECTED = "a checkpoint (.pth, .pt or .safetensors)"


def _first_sentence(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(". ")[0].rstrip(".")


def _unwrap(obj: object, source: str, key: str | None = None) -> StateDict:
    """The tensor dict inside BasicSR / Lightning / DDP style wrappers (EMA weights preferred), or ``obj[key]``."""
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            found = sorted(map(str, obj))[:8] if isinstance(obj, Mapping) else type(obj).__name__
            raise DscloraError(f"{source}: no entry {key!r} (found: {found})")
        obj = obj[key]
    while isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            raise DscloraError(f"{source}: no state dict found (top-level keys: {sorted(map(str, obj))[:8]})")
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise DscloraError(f"{source}: not a state dict of tensors")
    state = {str(k): v for k, v in obj.items()}
    for prefix in ("module.", "model.", "net_g."):
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _torch_load(path: Path) -> object:
    """``torch.load`` weights-only, its warnings silenced and its many failure kinds turned into one line."""
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; the error below says enough
            warnings.simplefilter("ignore")
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Unsupported global" in text or "GLOBAL" in text:  # a real pickle that names code to run
            detail = text.split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
            raise DscloraError(
                f"{path}: refused to load: it holds pickled objects other than tensors: {detail}"
            ) from None
        raise DscloraError(f"{path}: not {EXPECTED}: its bytes are not a PyTorch file") from None
    except Exception as exc:  # text, random bytes, truncated zips: torch raises a dozen kinds, none is a bug of ours
        raise DscloraError(f"{path}: not {EXPECTED} ({type(exc).__name__}: {_first_sentence(exc)})") from None


def _check_file(path: Path, what: str = "checkpoint") -> None:
    if not path.is_file():
        raise DscloraError(f"{what} not found: {path}")
    if path.stat().st_size == 0:
        raise DscloraError(f"{what} is empty (0 bytes): {path}")


def read_checkpoint(
    path: str | os.PathLike, prefer_ema: bool = True, key: str | None = None
) -> tuple[StateDict, dict | None]:
    """A checkpoint's tensors (``key``: the wrapper entry to take) and our embedded config, running no code.

    A training state gives its EMA weights unless ``prefer_ema`` is False (or it has none), and its model
    description as the config.
    """
    path = Path(path)
    _check_file(path)
    if path.suffix.lower() == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            state = load_file(str(path))
        except Exception as exc:  # the library raises several kinds on bad bytes; all mean the same to a user
            raise DscloraError(f"{path}: not a readable safetensors file ({_first_sentence(exc)})") from None
        config = None
        if METADATA_KEY in metadata:
            try:
                config = json.loads(metadata[METADATA_KEY])
            except json.JSONDecodeError:
                raise DscloraError(f"{path}: embedded dsclora config is not valid JSON") from None
            except RecursionError:  # a hostile header nests thousands of levels deep
                raise DscloraError(f"{path}: embedded dsclora config is nested too deeply") from None
            if not isinstance(config, dict):
                raise DscloraError(f"{path}: embedded dsclora config must be a JSON object")
        return (_unwrap(state, str(path), key) if key else state), config
    obj = _torch_load(path)
    if isinstance(obj, Mapping) and obj.get("format") == TRAIN_STATE_FORMAT:
        weights = (obj.get("ema") if prefer_ema else None) or obj.get("model")
        if not isinstance(weights, Mapping) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
            raise DscloraError(f"{path}: a training checkpoint whose weights are not a state dict of tensors")
        if "model_info" not in obj:
            raise DscloraError(f"{path}: a training checkpoint with no record of its network (model_info)")
        return {str(k): v for k, v in weights.items()}, {"train_state": obj["model_info"]}
    return _unwrap(obj, str(path), key), None


def read_train_state(path: str | os.PathLike) -> dict:
    """The whole training state ``dsclora train`` wrote (model, EMA, optimiser, step, RNG, config)."""
    path = Path(path)
    _check_file(path, "training checkpoint")
    state = _torch_load(path)
    if isinstance(state, dict) and str(state.get("format", "")).startswith("dsclora-train-state/"):
        if state["format"] != TRAIN_STATE_FORMAT:
            raise DscloraError(f"{path}: a training checkpoint of an older dsclora ({state['format']}); not readable")
        return state
    raise DscloraError(f"{path}: not a dsclora training checkpoint (latest.pt / best.pt)")


def write_train_state(path: str | os.PathLike, state: dict) -> None:
    """Write a training state atomically (a kill mid-write leaves the previous file)."""
    with atomic_write(path) as tmp:
        torch.save({"format": TRAIN_STATE_FORMAT, **state}, tmp)


def file_format_of(path: str | os.PathLike, requested: FileFormat | None = None) -> FileFormat:
    """The file format for ``path``: its suffix decides; ``requested`` must agree with it."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        hint = "; for ONNX use `dsclora export --format onnx`" if suffix == ".onnx" else ""
        raise DscloraError(f"{path}: unknown model file suffix {suffix or '(none)'!r} (use .safetensors or .pth){hint}")
    if requested is not None and requested != SUFFIXES[suffix]:
        raise DscloraError(f"{path}: the suffix says {SUFFIXES[suffix]}, but --format {requested} was asked for")
    return SUFFIXES[suffix]


def write_state_dict(state: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write tensors atomically: safetensors (with ``metadata`` as embedded JSON) or a plain ``.pth`` state dict
    like the official files, by ``path``'s suffix."""
    file_format = file_format_of(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    with atomic_write(path) as tmp:
        if file_format == "safetensors":
            extra = {METADATA_KEY: json.dumps(metadata)} if metadata is not None else {}
            save_file(tensors, str(tmp), metadata={**extra, "format": "pt"})
        else:
            torch.save(tensors, str(tmp))
    return Path(path)
