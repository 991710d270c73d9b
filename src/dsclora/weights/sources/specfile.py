"""Model spec files: any SR network given as its own Python file plus weights, the way the NTIRE kits ship them.

A spec file is YAML (``.yaml`` / ``.yml``); paths are relative to the spec file::

    code: models/team22_SPANV2_ESR.py      # the network's Python file
    class: SPANV2_ESR                      # the class in it
    args: {feature_channels: 32, upscale: 4, bias: false, use_span_attn: false}   # constructor keywords
    weights: weights/team22_spanv2.pth     # .pth / .pt / .safetensors, read weights-only
    key: params_ema                        # optional: the entry of a wrapper dict holding the state dict
    scale: 4
    input_range: 1                         # 1: RGB in [0, 1]; 255: RGB in [0, 255] (output divided by 255)
    pad_to: 1                              # input height and width padded (reflect) to a multiple of this
    import_paths: [rlfn]                   # optional: folders put on the import path (``from model import block``)
    in_channels: 3                         # optional: image channels in (default 3, RGB)
    receptive_radius: 21                   # optional: LR pixels each side that reach an output pixel, if known

Importing the file runs its code, exactly as ``python model.py`` would: use spec files you trust. The weights
are loaded strictly (every key of the class, nothing else), and one small forward checks the scale before the
network is handed on. A merged or trained network is saved as a plain state dict of the same keys, with a spec
file beside it that points at it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

import torch
import yaml
from torch import nn

from dsclora.errors import DscloraError
from dsclora.fs import atomic_write, sha256_file
from dsclora.models.descriptor import ArchHooks, ImageInterface, ModelDescriptor
from dsclora.weights.checkpoints import read_checkpoint, write_state_dict

SUFFIXES = (".yaml", ".yml")
KIND = "spec"
REQUIRED = {"code": str, "class": str, "weights": str, "scale": int}
OPTIONAL = {"args": dict, "key": str, "input_range": (int, float), "pad_to": int, "import_paths": list}
OPTIONAL |= {"in_channels": int, "receptive_radius": int}
INPUT_RANGES = (1, 255)  # what the network takes: RGB in [0, 1] or in [0, 255] (README, "Your own model")


def is_spec_file(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES


def read_spec(path: Path) -> dict:
    """The spec's values, types checked, paths made absolute; one-line errors naming the key."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as exc:
        raise DscloraError(f"{path}: not a readable YAML model spec ({type(exc).__name__})") from None
    return checked_spec(data, str(path), path.resolve().parent)


def checked_spec(data: object, where: str, folder: Path) -> dict:
    """A spec's values (``data``) checked, defaults filled in, paths resolved against ``folder``; errors start
    with ``where``. Also checks the record a training state keeps of a spec (``rebuild``)."""
    if not isinstance(data, dict):
        raise DscloraError(f"{where}: a model spec is a YAML mapping (code, class, weights, scale, ...)")
    unknown = sorted(map(str, set(data) - set(REQUIRED) - set(OPTIONAL)))
    if unknown:
        raise DscloraError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join([*REQUIRED, *OPTIONAL])})")
    data = {k: v for k, v in data.items() if not (k in OPTIONAL and v is None)}  # null: the default
    for key in REQUIRED:
        if key not in data:
            raise DscloraError(f"{where}: the model spec needs {key!r}")
    for key, kind in (REQUIRED | OPTIONAL).items():
        value = data.get(key)
        if key in data and (not isinstance(value, kind) or isinstance(value, bool)):
            raise DscloraError(f"{where}: {key!r} has the wrong type ({type(value).__name__} {value!r})")
    spec = {"args": {}, "key": None, "input_range": 1, "pad_to": 1, "import_paths": [], "in_channels": 3}
    spec["receptive_radius"] = None
    spec |= data
    if not 1 <= spec["scale"] <= 8:
        raise DscloraError(f"{where}: scale must be 1-8, got {spec['scale']}")
    if spec["input_range"] not in INPUT_RANGES:
        raise DscloraError(
            f"{where}: input_range must be 1 (the network takes RGB in [0, 1]) or 255 (RGB in [0, 255]), "
            f"got {spec['input_range']}"
        )
    if not 1 <= spec["pad_to"] <= 256:
        raise DscloraError(f"{where}: pad_to must be 1-256, got {spec['pad_to']}")
    if not 1 <= spec["in_channels"] <= 4:
        raise DscloraError(f"{where}: in_channels must be 1-4, got {spec['in_channels']}")
    if spec["receptive_radius"] is not None and spec["receptive_radius"] < 0:
        raise DscloraError(f"{where}: receptive_radius must be >= 0")
    if not all(isinstance(name, str) for name in spec["args"]):
        raise DscloraError(f"{where}: 'args' must be keyword arguments (names that are strings)")
    try:
        json.dumps(spec["args"], sort_keys=True)  # what ``identity`` hashes
    except (TypeError, ValueError, RecursionError):
        raise DscloraError(f"{where}: 'args' must hold plain values (numbers, strings, lists, mappings)") from None
    for key in ("code", "weights"):
        spec[key] = str((folder / spec[key]).resolve())
        if Path(spec[key]).is_dir():
            raise DscloraError(f"{where}: {key} names a folder, not a file: {spec[key]}")
        if not Path(spec[key]).is_file():
            raise DscloraError(f"{where}: {key} file not found: {spec[key]}")
    spec["import_paths"] = [str((folder / str(p)).resolve()) for p in spec["import_paths"]]
    return spec


def _import(code: Path, import_paths: list[str]) -> ModuleType:
    """Import the user's file under a name of its own (two spec files may both name theirs ``model.py``).

    ``import_paths`` are on ``sys.path`` only while the file runs, and the modules it imported from them are
    then dropped from ``sys.modules``: two spec files whose folders both hold a package ``model`` stay apart.
    """
    name = "dsclora_user_" + hashlib.sha256("|".join([str(code), *import_paths]).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    saved_path, before = list(sys.path), set(sys.modules)
    sys.path[:0] = import_paths
    module_spec = importlib.util.spec_from_file_location(name, code)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SystemExit as exc:  # sys.exit() at import: not the end of dsclora (KeyboardInterrupt still is)
        raise DscloraError(f"{code}: the model file exited at import (sys.exit({exc.code!r}))") from None
    except ImportError as exc:
        hint = " (add its folder to import_paths)" if isinstance(exc, ModuleNotFoundError) else ""
        raise DscloraError(f"{code}: import failed: {exc}{hint}") from None
    except Exception as exc:  # the user's code, any error at all: report it, do not crash
        raise DscloraError(f"{code}: running the file failed: {type(exc).__name__}: {exc}") from None
    finally:
        sys.path[:] = saved_path
        for added in set(sys.modules) - before:
            added_module = sys.modules[added]  # a namespace package has no __file__, only __path__
            origins = [getattr(added_module, "__file__", None) or "", *getattr(added_module, "__path__", [])]
            if any(o.startswith(folder + "/") for o in origins for folder in import_paths):
                del sys.modules[added]
    sys.modules[name] = module
    return module


def build_module(spec: Mapping) -> nn.Module:
    """The spec's class built with its arguments (weights not loaded)."""
    code = Path(spec["code"])
    module = _import(code, spec["import_paths"])
    cls = getattr(module, spec["class"], None)
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        found = sorted(n for n, v in vars(module).items() if inspect.isclass(v) and issubclass(v, nn.Module))
        raise DscloraError(f"{code}: no nn.Module class {spec['class']!r} (found: {', '.join(found) or 'none'})")
    try:
        return cls(**spec["args"])
    except SystemExit as exc:
        raise DscloraError(f"building {spec['class']} exited (sys.exit({exc.code!r}))") from None
    except TypeError as exc:
        raise DscloraError(f"{spec['class']}({', '.join(spec['args'])}): {exc}") from None
    except Exception as exc:
        raise DscloraError(f"building {spec['class']} failed: {type(exc).__name__}: {exc}") from None


def _load_weights(model: nn.Module, spec: Mapping, state: Mapping[str, torch.Tensor]) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise DscloraError(f"{spec['weights']}: does not fit {spec['class']}: {detail}") from None
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise DscloraError(f"{spec['weights']}: tensor {name} holds NaN or inf")


@torch.no_grad()
def _check_scale(model: nn.Module, spec: Mapping, in_channels: int) -> int:
    """Run one small forward; the output must be ``scale`` times the input. Returns the output channels."""
    side = max(16, spec["pad_to"])
    probe = torch.rand(1, in_channels, side, side)
    try:
        out = ImageInterface(model, spec["scale"], spec["input_range"], spec["pad_to"])(probe)
    except SystemExit as exc:
        raise DscloraError(f"{spec['class']}: a {side}x{side} test forward exited (sys.exit({exc.code!r}))") from None
    except Exception as exc:  # the user's forward: any error is theirs to see in one line
        raise DscloraError(
            f"{spec['class']}: a {side}x{side} test forward failed: {type(exc).__name__}: {exc}"
        ) from None
    want = (side * spec["scale"], side * spec["scale"])
    if out.dim() != 4 or tuple(out.shape[-2:]) != want:
        raise DscloraError(f"{spec['class']}: a {side}x{side} input gave {tuple(out.shape)}, not x{spec['scale']}")
    return out.shape[1]


def identity(spec: Mapping) -> str:
    """What the network's outputs depend on: weights, code, class and arguments (keys cached teacher targets)."""
    parts = [
        sha256_file(spec["weights"]),
        sha256_file(spec["code"]),
        spec["class"],
        json.dumps(spec["args"], sort_keys=True),
    ]
    parts += [str(spec["key"]), str(spec["input_range"]), str(spec["pad_to"])]
    return hashlib.sha256("|".join(["spec", *parts]).encode()).hexdigest()


def _ntire_module(spec: Mapping):
    """The NTIRE hook: the user's own file plus a subclass with the spec's arguments as its only way to build,
    and its input range and padding in the forward (the kit feeds [0, 1] images of any size)."""
    code = Path(spec["code"]).read_text()

    def module(model: nn.Module, class_name: str) -> tuple[str, dict[str, torch.Tensor]]:
        if spec["import_paths"]:
            raise DscloraError(
                f"{spec['code']} imports other files (import_paths), but the NTIRE kit takes one module file"
            )
        args = ", ".join(f"{k}={v!r}" for k, v in spec["args"].items())
        wrapper = f"""

# ---- written by dsclora: the class the NTIRE kit builds, with this network's arguments ----
import torch.nn.functional as _F


class {class_name}({spec["class"]}):
    def __init__(self):
        super().__init__({args})

    def forward(self, x):
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % {spec["pad_to"]}, -w % {spec["pad_to"]}
        if pad_h or pad_w:
            x = _F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        out = super().forward(x * {spec["input_range"]!r}) / {spec["input_range"]!r}
        return out[..., : h * {spec["scale"]}, : w * {spec["scale"]}]
"""
        state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
        return code + wrapper, state

    return module


def save_spec(spec: Mapping, weights: Path, path: Path) -> Path:
    """A spec file at ``path`` for ``weights`` (a plain state dict) with the rest of ``spec``; paths absolute."""
    data = {k: v for k, v in spec.items() if v not in (None, [], {}) or k == "args"}
    data["weights"] = str(Path(weights).resolve())
    data.pop("key", None)
    with atomic_write(path) as tmp:
        tmp.write_text(
            "# Model spec written by dsclora (see `dsclora upscale --help`).\n" + yaml.safe_dump(data, sort_keys=False)
        )
    return path


def _saver(spec: Mapping):
    def save(module: nn.Module, path: Path, train_form: bool = False) -> list[Path]:
        if train_form:
            raise DscloraError(f"{spec['class']} has no training form dsclora knows")
        weights = write_state_dict(module.state_dict(), path)
        return [save_spec(spec, weights, Path(path).with_suffix(".yaml")), weights]  # the file to load first

    return save


def load_spec(spec: Mapping, label: str, device: torch.device | str = "cpu") -> ModelDescriptor:
    """Build, load and check the network a (read) spec describes."""
    model = build_module(spec)
    state, _ = read_checkpoint(spec["weights"], key=spec["key"])
    _load_weights(model, spec, state)
    model.eval()
    in_channels = spec["in_channels"]
    out_channels = _check_scale(model, spec, in_channels)
    return ModelDescriptor(
        module=model.to(device),
        arch=spec["class"],
        scale=spec["scale"],
        label=label,
        source={"kind": KIND, "spec": dict(spec)},
        identity=identity(spec),
        in_channels=in_channels,
        out_channels=out_channels,
        input_range=float(spec["input_range"]),
        size_multiple=spec["pad_to"],
        receptive_radius=spec["receptive_radius"],
        path=Path(spec["weights"]),
        saver=_saver(spec),
        hooks=ArchHooks(ntire_module=_ntire_module(spec)),
    )


def rebuild(source: Mapping, label: str) -> ModelDescriptor:
    """The recorded spec's network with its original weights (a training state then loads its own); the record
    is checked as a spec file is (its paths are absolute)."""
    spec = checked_spec(source.get("spec"), f"{label}: its recorded model spec", Path.cwd())
    return load_spec(spec, label)
