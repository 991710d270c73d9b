"""``--backend auto``, decided here and nowhere else: the fastest path on this machine, and whether compiling
pays for a job.

Eager paths cost nothing to start, so their speed per pixel is timed once per machine and precision and cached
(keyed by device model, threads, versions and the network's identity). On a CPU they are torch (NCHW), channels_last
and, for fp32, ONNX Runtime. On a GPU they are torch and channels_last at the network's own width and
zero-padded to 8, 16 and 32 channels (``padding.py``; tensor cores want multiples of 8).

``compile`` is usually the fastest per pixel, but Inductor spends seconds compiling each new input shape
(~20 s cold on a 2-core CPU, a few seconds once its on-disk cache is warm) and gives up after 8 shapes. So it is
timed only for a job big enough that it might pay (at least ``MIN_JOB_SECONDS`` of estimated eager work), and
chosen only when the job's forwards, grouped by input shape, save more time than one compile per shape costs.
Tiled jobs have one window shape per image size (``tiling.tile_windows``), which is where compile wins.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from dsclora.devices import device_name
from dsclora.fs import user_cache_dir
from dsclora.models.descriptor import ModelDescriptor
from dsclora.runtime.backends import check_combination, make_runner

MAX_COMPILED_SHAPES = 8  # torch._dynamo.config.recompile_limit: past it, dynamo falls back to eager
MIN_JOB_SECONDS = 30.0  # below this, a compile (seconds per shape) cannot pay for itself
GPU_PADS = (0, 8, 16, 32)
Shapes = Mapping[tuple[int, int], int]  # LR (height, width) -> forwards of that shape


@dataclass(frozen=True)
class Choice:
    """A resolved back-end: what ``make_runner`` takes, and why it was chosen (printed for the user)."""

    backend: str
    pad: int = 0
    why: str = "asked for"

    @property
    def label(self) -> str:
        return self.backend + (f" (padded to a multiple of {self.pad} channels)" if self.pad else "")


def _candidates(described: ModelDescriptor, device: torch.device, precision: str) -> list[tuple[str, int]]:
    """The eager (backend, pad) paths worth timing here."""
    if device.type == "cuda":
        pads = GPU_PADS if described.hooks.pad_channels is not None else (0,)
        return [("torch", 0)] + [("channels_last", pad) for pad in pads]
    names = [("torch", 0), ("channels_last", 0)]
    if precision == "fp32":
        try:
            import onnxruntime  # noqa: F401

            names.append(("onnxruntime", 0))
        except ImportError:
            pass
    return names


def _timed(runner, x: torch.Tensor, device: torch.device, repeats: int) -> tuple[float, float]:
    """(first call, best of ``repeats`` later calls) in seconds."""

    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        runner(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    first = once()
    return first, min(once() for _ in range(repeats))


class Timings:
    """Cached per-machine timings: seconds per megapixel of each path, and compile's one-off cost."""

    def __init__(
        self, described: ModelDescriptor, device: torch.device, precision: str, size: int = 256, repeats: int = 3
    ) -> None:
        self.model, self.device, self.precision, self.size, self.repeats = described, device, precision, size, repeats
        self.candidates = _candidates(described, device, precision)
        self.key = "|".join(
            [device_name(device), torch.__version__, described.identity[:16], precision]
            + [f"{name}/{pad}" for name, pad in self.candidates]
        )
        self.path = user_cache_dir("auto_backend.json")
        try:
            known = json.loads(self.path.read_text())
        except (OSError, ValueError):
            known = {}
        self.known = known if isinstance(known, dict) else {}
        entry = self.known.get(self.key)
        self.entry: dict = entry if isinstance(entry, dict) and "per_mpix" in entry else {}

    def _measure(self, backend: str, pad: int) -> tuple[float, float]:
        """(compile-or-warm-up seconds, seconds per megapixel)."""
        runner = make_runner(self.model, backend, self.device, self.precision, pad)
        x = torch.rand(1, self.model.in_channels, self.size, self.size, device=self.device)
        first, steady = _timed(runner, x, self.device, self.repeats)
        return first - steady, steady / (self.size * self.size / 1e6)

    def eager(self) -> dict[str, float]:
        """Seconds per megapixel of each eager path, keyed ``backend/pad`` (measured on first use, then cached)."""
        if "per_mpix" not in self.entry:
            self.entry["per_mpix"] = {f"{b}/{p}": self._measure(b, p)[1] for b, p in self.candidates}
            self._save()
        return self.entry["per_mpix"]

    def compiled(self, pad: int) -> tuple[float, float] | None:
        """(compile seconds, seconds per megapixel) of ``compile``; None where it does not work here."""
        key = f"compile/{pad}"
        if key not in self.entry:
            try:
                self.entry[key] = list(self._measure("compile", pad))
            except Exception:  # no C++ compiler, unsupported platform: Inductor raises many kinds
                self.entry[key] = None
            self._save()
        value = self.entry[key]
        return tuple(value) if value else None

    def _save(self) -> None:
        self.known[self.key] = self.entry
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.known, indent=1))
        except OSError:
            pass  # a read-only cache only costs a re-measurement next time


def choose(timings: Timings, shapes: Shapes | None = None) -> Choice:
    """The decision rule on measured ``timings`` (see the module docstring); ``shapes``: LR size -> forwards."""
    eager = timings.eager()
    best_key = min(eager, key=eager.get)
    backend, pad = best_key.split("/")[0], int(best_key.split("/")[1])
    why = "fastest eager path measured on this machine"
    best = Choice(backend, pad, why)
    if not shapes or len(shapes) > MAX_COMPILED_SHAPES:
        return best
    shapes = Counter(shapes)
    mpix = {shape: shape[0] * shape[1] / 1e6 for shape in shapes}
    job_seconds = sum(n * mpix[s] * eager[best_key] for s, n in shapes.items())
    if job_seconds < MIN_JOB_SECONDS:
        return best
    compiled = timings.compiled(pad)
    if compiled is None:
        return Choice(backend, pad, why + "; compile unavailable")
    compile_seconds, per_mpix = compiled
    saved = sum(n * mpix[s] * (eager[best_key] - per_mpix) for s, n in shapes.items())
    if saved > len(shapes) * compile_seconds:
        return Choice(
            "compile", pad, f"compiling {len(shapes)} shape(s) (~{compile_seconds:.0f} s each) saves ~{saved:.0f} s"
        )
    return Choice(backend, pad, why + "; compiling would not pay for this job")


def resolve_backend(
    described: ModelDescriptor,
    backend: str,
    device: torch.device,
    precision: str = "fp32",
    shapes: Shapes | None = None,
) -> Choice:
    """``backend`` as asked, or for ``auto`` the measured choice for this network, device, precision and job."""
    check_combination(backend, device, precision)
    if backend != "auto":
        return Choice(backend)
    return choose(Timings(described, device, precision), shapes)
