"""``--backend auto``: the fastest exact (fp32) path on this machine, and whether compiling pays for a job.

The eager paths (torch, channels_last, onnxruntime) cost nothing to start, so their speed per pixel is timed
once per machine and cached (keyed by device, threads, versions and network width). ``compile`` is usually
the fastest per pixel, but Inductor spends seconds compiling each new input shape (~20 s cold on a 2-core CPU,
a few seconds once its on-disk cache is warm) and gives up after 8 shapes. So it is timed only for a job big
enough that it might pay (at least ``MIN_JOB_SECONDS`` of estimated eager work), and chosen only when the job's
forwards, grouped by input shape, save more time than one compile per shape costs. Tiled jobs have one window
shape per image size (``inference.tile_windows``), which is where compile wins.
"""

from __future__ import annotations

import copy
import json
import time
from collections import Counter
from collections.abc import Mapping

import torch

from dsclora.utils import user_cache_dir

MAX_COMPILED_SHAPES = 8  # torch._dynamo.config.recompile_limit: past it, dynamo falls back to eager
MIN_JOB_SECONDS = 30.0  # below this, a compile (seconds per shape) cannot pay for itself
Shapes = Mapping[tuple[int, int], int]  # LR (height, width) -> forwards of that shape


def _available() -> list[str]:
    """The eager paths this install can run."""
    names = ["torch", "channels_last"]
    try:
        import onnxruntime  # noqa: F401

        names.append("onnxruntime")
    except ImportError:
        pass
    return names


def _timed(runner, x: torch.Tensor, device: torch.device, repeats: int) -> tuple[float, float]:
    """(first call, best of ``repeats`` later calls) in seconds."""

    def once() -> float:
        start = time.perf_counter()
        runner(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    first = once()
    return first, min(once() for _ in range(repeats))


class Timings:
    """Cached per-machine timings: seconds per megapixel of each path, and compile's one-off cost."""

    def __init__(self, model, device: torch.device, size: int = 256, repeats: int = 3) -> None:
        self.model, self.device, self.size, self.repeats = model, device, size, repeats
        self.key = "|".join(
            [str(device), str(torch.get_num_threads()), torch.__version__, f"C{model.config.channels}", *_available()]
        )
        self.path = user_cache_dir("auto_backend.json")
        try:
            known = json.loads(self.path.read_text())
        except (OSError, ValueError):
            known = {}
        self.known = known
        entry = known.get(self.key)
        self.entry: dict = entry if isinstance(entry, dict) and "per_mpix" in entry else {}

    def _input(self) -> torch.Tensor:
        return torch.rand(1, self.model.config.in_channels, self.size, self.size, device=self.device)

    def _measure(self, backend: str) -> tuple[float, float]:
        from dsclora.backends import make_runner

        runner, _ = make_runner(copy.deepcopy(self.model), backend, self.device)
        first, steady = _timed(runner, self._input(), self.device, self.repeats)
        return first - steady, steady / (self.size * self.size / 1e6)

    def eager(self) -> dict[str, float]:
        """Seconds per megapixel of each eager path (measured on first use, then cached)."""
        if "per_mpix" not in self.entry:
            self.entry["per_mpix"] = {name: self._measure(name)[1] for name in _available()}
            self._save()
        return self.entry["per_mpix"]

    def compiled(self) -> tuple[float, float] | None:
        """(compile seconds, seconds per megapixel) of ``compile``; None where it does not work here."""
        if "compile" not in self.entry:
            try:
                self.entry["compile"] = list(self._measure("compile"))
            except Exception:  # no C++ compiler, unsupported platform: Inductor raises many kinds
                self.entry["compile"] = None
            self._save()
        value = self.entry["compile"]
        return tuple(value) if value else None

    def _save(self) -> None:
        self.known[self.key] = self.entry
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.known, indent=1))
        except OSError:
            pass  # a read-only cache only costs a re-measurement next time


def choose(model, device: torch.device, shapes: Shapes | None = None) -> tuple[str, str]:
    """(backend, why) for fp32 work; ``shapes`` (LR size -> forwards) lets compile compete for the job."""
    timings = Timings(model, device)
    eager = timings.eager()
    best = min(eager, key=eager.get)
    why = "fastest eager fp32 path measured on this machine"
    if not shapes or len(shapes) > MAX_COMPILED_SHAPES:
        return best, why
    shapes = Counter(shapes)
    mpix = {shape: shape[0] * shape[1] / 1e6 for shape in shapes}
    job_seconds = sum(n * mpix[s] * eager[best] for s, n in shapes.items())
    if job_seconds < MIN_JOB_SECONDS:
        return best, why
    compiled = timings.compiled()
    if compiled is None:
        return best, why + "; compile unavailable"
    compile_seconds, per_mpix = compiled
    saved = sum(n * mpix[s] * (eager[best] - per_mpix) for s, n in shapes.items())
    if saved > len(shapes) * compile_seconds:
        return "compile", f"compiling {len(shapes)} shape(s) (~{compile_seconds:.0f} s each) saves ~{saved:.0f} s"
    return best, why + "; compiling would not pay for this job"
