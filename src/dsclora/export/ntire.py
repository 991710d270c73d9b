"""Files for the NTIRE Efficient-SR test kit: ``teamNN_Name.py`` (a plain module) and ``teamNN_Name.pth``.

The kit imports ``models/teamNN_Name.py``, builds the class and loads ``model_zoo/teamNN_Name.pth`` strictly
(NTIRE 2024 / 2025 ESR ``test_demo.py``). What the module holds comes from the architecture (``ArchHooks.
ntire_module``: SPAN writes its own self-contained template; a spec-file network its own file plus a class with
its arguments); this module names, checks and writes the files. Before anything is put in place, the module is
imported and run the way the kit does, in a separate Python process that sees nothing of dsclora, and its output
is compared with ours.
"""

from __future__ import annotations

import ast
import builtins
import keyword
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from dsclora.errors import DscloraError
from dsclora.fs import existing_folder, missing_folders, no_space, remove_empty
from dsclora.models.descriptor import ModelDescriptor

TOLERANCE = 1e-4  # max abs difference to our output on a [0, 1] image
_CHECK = """
import importlib.util, sys
import numpy as np, torch
path, weights, name, probe, out = sys.argv[1:6]
spec = importlib.util.spec_from_file_location("kit_module", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
model = getattr(module, name)()
model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
with torch.no_grad():
    np.save(out, model.eval()(torch.from_numpy(np.load(probe))).numpy())
"""


def ntire_stem(team: int, name: str) -> str:
    """``teamNN_Name`` as the kit names its files; ``name`` must be a Python identifier (it is the class)."""
    if not 0 <= team <= 999:
        raise DscloraError(f"--team {team}: expected a team number 0-999")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or keyword.iskeyword(name):
        raise DscloraError(f"--name {name!r}: must be a Python identifier that is not a keyword (it names the class)")
    if hasattr(builtins, name):
        raise DscloraError(f"--name {name!r}: would shadow Python's built-in {name!r}; choose another name")
    return f"team{team:02d}_{name}"


def _shadows(source: str, name: str) -> bool:
    """Whether the module's own code imports or assigns ``name``, or defines it more than once (the class it
    defines for the kit is the one definition allowed)."""
    definitions = 0
    for node in ast.parse(source).body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            if name in {(a.asname or a.name).split(".")[0] for a in node.names}:
                return True
        elif isinstance(node, ast.Assign):
            if name in {t.id for t in node.targets if isinstance(t, ast.Name)}:
                return True
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            definitions += node.name == name
    return definitions > 1


def _run_like_the_kit(folder: Path, stem: str, name: str, probe: torch.Tensor) -> torch.Tensor:
    """Import and run the written module in a fresh ``python -I`` (no dsclora, no user site) as the kit would."""
    probe_path, out_path = folder / "probe.npy", folder / "out.npy"
    np.save(probe_path, probe.numpy())
    args = [str(folder / f"{stem}.py"), str(folder / f"{stem}.pth"), name, str(probe_path), str(out_path)]
    done = subprocess.run([sys.executable, "-I", "-c", _CHECK, *args], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise DscloraError(f"the written NTIRE module fails in a clean Python ({last}); nothing written")
    return torch.from_numpy(np.load(out_path))


def export_ntire(described: ModelDescriptor, folder: str | Path, team: int, name: str) -> tuple[Path, Path, float]:
    """Write ``teamNN_Name.py`` and ``teamNN_Name.pth`` into ``folder`` after the kit-style check; returns both
    paths and the max abs difference of the kit module's output to ours."""
    if described.hooks.ntire_module is None:
        raise DscloraError(
            f"{described.arch} ({described.label}) has no standalone module file for the NTIRE kit; "
            "give the network as a model spec file (its own Python file), or export ONNX"
        )
    stem = ntire_stem(team, name)
    source, state = described.hooks.ntire_module(described.module, name)
    if _shadows(source, name):
        raise DscloraError(f"--name {name!r}: the module already uses that name; choose another")
    folder = Path(folder)
    made = missing_folders(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        model = described.runnable().float().cpu().eval()
        probe = torch.rand(1, described.in_channels, 32, 40, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            want = model(probe)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".ntire-") as work:
            work = Path(work)
            (work / f"{stem}.py").write_text(source)
            torch.save(state, work / f"{stem}.pth")
            diff = float((_run_like_the_kit(work, stem, name, probe) - want).abs().max())
            if not diff <= TOLERANCE:
                raise DscloraError(f"the NTIRE module's output differs from ours by {diff:.2e}; nothing written")
            for suffix in (".pth", ".py"):
                os.replace(work / f"{stem}{suffix}", folder / f"{stem}{suffix}")
    except BaseException as exc:  # nothing of a failed export stays: its folders go too, and a full disk says so
        remove_empty(made)
        full = no_space(exc, existing_folder(folder), f"{stem}.pth") if isinstance(exc, Exception) else None
        if full is not None:
            raise full from None
        raise
    return folder / f"{stem}.py", folder / f"{stem}.pth", diff
