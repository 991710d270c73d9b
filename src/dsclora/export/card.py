"""The metadata file written beside every export, in OpenModelDB's model fields.

OpenModelDB (the model database chaiNNer and the upscaling community use) describes a model with ``name``,
``author``, ``license`` (SPDX), ``tags``, ``description``, ``date``, ``architecture``, ``size``, ``scale``,
``inputChannels``, ``outputChannels`` and ``resources`` (one per file: platform, type, size, sha256), plus
optional training facts (``dataset``, ``trainingIterations``, ``trainingBatchSize``, ``trainingHRSize``,
``pretrainedModelG``). What is known about the weights comes from a JSON card beside the weights file
(``<weights>.json``; the embedded model ships one), else from the registry entry; the rest from the tensors.
An ONNX resource whose graph takes only heights and widths that are multiples of N (its metadata's
``size_multiple``, see ``export.onnx``) says so in ``inputSizeMultiple``, and one that takes one image at a time
in ``inputBatchSize`` (dsclora's fields, not OpenModelDB's).
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from dsclora.fs import atomic_write, sha256_file
from dsclora.models.descriptor import ModelDescriptor
from dsclora.weights.registry import REGISTRY

PLATFORMS = {
    ".onnx": ("onnx", "onnx"),
    ".pth": ("pytorch", "pth"),
    ".safetensors": ("pytorch", "safetensors"),
    ".param": ("ncnn", "param"),
    ".bin": ("ncnn", "bin"),
    ".py": ("pytorch", "py"),
}


def _known_facts(loaded: ModelDescriptor) -> dict:
    """Card fields of the source weights: their sidecar JSON, else the registry entry, else nothing."""
    if loaded.path is not None:
        sidecar = loaded.path.with_suffix(".json")
        if sidecar.is_file():
            return json.loads(sidecar.read_text())
    entry = REGISTRY.get(loaded.label)
    if entry is not None:
        return {"description": entry.description, "license": entry.license, "source": entry.url}
    return {}


def _resource(path: Path) -> dict:
    platform, kind = PLATFORMS.get(path.suffix, ("other", path.suffix.lstrip(".")))
    found = {"platform": platform, "type": kind, "file": path.name, "size": path.stat().st_size}
    found["sha256"] = sha256_file(path)
    if path.suffix == ".onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        if int(props.get("size_multiple", "1")) > 1:
            found["inputSizeMultiple"] = int(props["size_multiple"])
        if props.get("batch") == "1":
            found["inputBatchSize"] = 1
    return found


def model_card(loaded: ModelDescriptor, files: list[Path]) -> dict:
    """The OpenModelDB-style record of an export made of ``files``."""
    facts = _known_facts(loaded)
    params = sum(p.numel() for p in loaded.module.parameters())
    card = {
        "name": facts.get("name", loaded.label if loaded.path is None else loaded.path.stem),
        "author": facts.get("author", "unknown"),
        "license": facts.get("license", "unknown"),
        "tags": facts.get("tags", ["general-upscaler"]),
        "description": facts.get("description", f"{loaded.arch}, x{loaded.scale}, {params:,} parameters"),
        "date": facts.get("date", datetime.date.today().isoformat()),
        "architecture": loaded.arch.lower(),
        "size": list(loaded.hooks.size_tags),
        "scale": loaded.scale,
        "inputChannels": loaded.in_channels,
        "outputChannels": loaded.out_channels,
        "parameters": params,
        "resources": [_resource(f) for f in files],
    }
    for key in ("dataset", "datasetSize", "trainingIterations", "trainingBatchSize", "trainingHRSize",
                "pretrainedModelG", "teacher", "recipe", "source", "metrics"):  # fmt: skip
        if key in facts:
            card[key] = facts[key]
    return card


def write_card(loaded: ModelDescriptor, files: list[Path], path: Path) -> Path:
    """Write the card for ``files`` to ``path`` atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(model_card(loaded, files), indent=2, ensure_ascii=False) + "\n")
    return path
