"""``--backend auto`` and ``--precision auto``, decided here and nowhere else: the fastest path on this machine
whose output is as good as fp32's, and whether compiling pays for a job.

**Back-end.** Eager paths cost nothing to start, so their speed per pixel is timed once and cached. On a CPU
they are torch (NCHW), channels_last and, for fp32, ONNX Runtime (reduced precisions: channels_last alone,
what oneDNN's bf16 convs want). On a GPU they are torch and channels_last at the network's own width and
zero-padded to 8, 16 and 32 channels where the architecture pads exactly (tensor cores want multiples of 8).

``compile`` is usually the fastest per pixel, but Inductor spends seconds compiling each new input shape
(~20 s cold on a 2-core CPU, a few seconds once its on-disk cache is warm) and gives up after 8 shapes. So it is
timed only for a job big enough that it might pay (at least ``MIN_JOB_SECONDS`` of estimated eager work), and
chosen only when the job's forwards, grouped by input shape, save more time than one compile per shape costs.
Tiled jobs have one window shape per image size (``tiling.tile_windows``), which is where compile wins.

**Precision.** ``auto`` considers only what the device computes natively (``native_precisions``): fp32
everywhere, bf16-accurate and bf16 on CPUs with native bf16 (``devices.native_bf16``: AVX512-BF16 / AMX / Arm
bf16) and on GPUs that support it, fp16 on CUDA. Where bf16 would be emulated (e.g. AMD Zen 3: every bf16 path
6-7x slower) nothing else is even timed, so ``auto`` is exactly the fp32 choice. Each reduced-precision path is
first checked against fp32 on the reference images (``reference.py``: within 0.005 dB Y-PSNR and 8/255); a
path outside the bound is never timed, let alone chosen. The fastest remaining path at the job's shape class
wins; its reason is printed.

Timings are cached per device (CPU model, family, ISA and threads, or GPU name), torch and dsclora versions
(a release may change what a path computes and how fast), network identity (weights and code digest),
precision, candidate back-ends and shape class (``shape_class``: the speed-up of reduced precision depends on
the size, e.g. once the feature maps outgrow the caches); accuracy per device, versions, network, precision and
back-end.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from dsclora.devices import device_name, native_bf16
from dsclora.errors import DscloraError
from dsclora.fs import user_cache_dir
from dsclora.models.descriptor import ModelDescriptor
from dsclora.runtime.backends import check_combination, make_runner
from dsclora.runtime.reference import Accuracy, accuracy
from dsclora.version import __version__

MAX_COMPILED_SHAPES = 8  # torch._dynamo.config.recompile_limit: past it, dynamo falls back to eager
MIN_JOB_SECONDS = 30.0  # below this, a compile (seconds per shape) cannot pay for itself
SLOW_CALL_SECONDS = 2.0  # a path whose first call takes longer is timed with one more call, not ``repeats``
GPU_PADS = (0, 8, 16, 32)
# (largest LR area in the class, the input size its timings are measured at); the last class is unbounded
SHAPE_CLASSES = ((150 * 150, (128, 128)), (320 * 320, (256, 256)), (None, (270, 480)))
Shapes = Mapping[tuple[int, int], int]  # LR (height, width) -> forwards of that shape
Path = tuple[str, int]  # (backend, pad)


@dataclass(frozen=True)
class Choice:
    """A resolved path: what ``make_runner`` takes, and why it was chosen (printed for the user)."""

    backend: str
    pad: int = 0
    precision: str = "fp32"
    why: str = "asked for"

    @property
    def label(self) -> str:
        return self.backend + (f" (padded to a multiple of {self.pad} channels)" if self.pad else "")


def native_precisions(device: torch.device) -> tuple[str, ...]:
    """The precisions ``auto`` may choose on ``device``: fp32 and what the hardware computes natively."""
    bf16 = ("bf16-accurate", "bf16") if native_bf16(device) else ()
    if device.type == "cuda":
        return ("fp32", "fp16", *bf16)
    return ("fp32", *bf16) if device.type == "cpu" else ("fp32",)


def shape_class(shapes: Shapes | None) -> tuple[int, int]:
    """The input size a job's timings are measured at: the class of the shape that holds most of its pixels."""
    if not shapes:
        return SHAPE_CLASSES[1][1]
    h, w = max(shapes, key=lambda s: s[0] * s[1] * shapes[s])
    return next(size for limit, size in SHAPE_CLASSES if limit is None or h * w <= limit)


def _candidates(described: ModelDescriptor, device: torch.device, precision: str) -> list[Path]:
    """The eager (backend, pad) paths worth timing here."""
    if device.type == "cuda":
        pads = GPU_PADS if described.hooks.pad_channels is not None else (0,)
        return [("torch", 0)] + [("channels_last", pad) for pad in pads]
    if precision != "fp32":
        return [("channels_last", 0)]
    names = [("torch", 0), ("channels_last", 0)]
    try:
        import onnxruntime  # noqa: F401

        names.append(("onnxruntime", 0))
    except ImportError:
        pass
    return names


def _timed(runner, x: torch.Tensor, device: torch.device, repeats: int) -> tuple[float, float]:
    """(first call, best of ``repeats`` later calls) in seconds; of one later call where the first took over
    ``SLOW_CALL_SECONDS``: its noise is then small beside it, and a large network's repeats would cost more
    than a one-image job (CRAFT: ~15 s a call at 480x270 on a 2-core CPU, five paths to time)."""

    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        runner(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    first = once()
    return first, min(once() for _ in range(repeats if first <= SLOW_CALL_SECONDS else 1))


class _Cache:
    """auto's JSON cache file: one dict per key; unreadable or read-only files only cost a re-measurement."""

    def __init__(self) -> None:
        self.path = user_cache_dir("auto_backend.json")
        try:
            known = json.loads(self.path.read_text())
        except (OSError, ValueError):
            known = {}
        self.known = known if isinstance(known, dict) else {}

    def entry(self, key: str) -> dict:
        found = self.known.get(key)
        return found if isinstance(found, dict) else {}

    def save(self, key: str, entry: dict) -> None:
        self.known[key] = entry
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.known, indent=1))
        except OSError:
            pass


def _check_accuracy(described: ModelDescriptor, device: torch.device, precision: str, path: Path) -> Accuracy:
    """The path against eager fp32 on the reference images (``reference.py``)."""
    runner = make_runner(described, path[0], device, precision, path[1])
    return accuracy(runner, make_runner(described, "torch", device), described.scale, device)


class Timings:
    """Cached per-machine measurements of one precision: seconds per megapixel of each path at one input
    size, compile's one-off cost, and (reduced precisions) each path's accuracy against fp32."""

    def __init__(
        self,
        described: ModelDescriptor,
        device: torch.device,
        precision: str,
        size: tuple[int, int] = SHAPE_CLASSES[1][1],
        backend: str = "auto",
        repeats: int = 3,
    ) -> None:
        self.model, self.device, self.precision, self.size, self.repeats = described, device, precision, size, repeats
        self.candidates = _candidates(described, device, precision) if backend == "auto" else [(backend, 0)]
        common = [device_name(device), torch.__version__, f"dsclora {__version__}", described.identity[:16], precision]
        self.key = "|".join([*common, "{}x{}".format(*size)] + [f"{name}/{pad}" for name, pad in self.candidates])
        self.accuracy_key = "|".join([*common, "accuracy"])
        self.cache = _Cache()
        self.entry = self.cache.entry(self.key)

    def _measure(self, backend: str, pad: int) -> tuple[float, float]:
        """(compile-or-warm-up seconds, seconds per megapixel)."""
        runner = make_runner(self.model, backend, self.device, self.precision, pad)
        x = torch.rand(1, self.model.in_channels, *self.size, device=self.device)
        first, steady = _timed(runner, x, self.device, self.repeats)
        return first - steady, steady / (self.size[0] * self.size[1] / 1e6)

    def per_mpix(self, path: Path) -> float | None:
        """Seconds per megapixel of one eager path (measured on first use, then cached); None where the path
        refuses this network (ONNX Runtime for a network whose padding a trace would freeze)."""
        known = self.entry.setdefault("per_mpix", {})
        name = "{}/{}".format(*path)
        if name not in known:
            try:
                known[name] = self._measure(*path)[1]
            except DscloraError:
                if path[0] == "torch":  # the reference path always runs: its refusal is the user's to see
                    raise
                known[name] = None
            self.cache.save(self.key, self.entry)
        return known[name]

    def eager(self, paths: list[Path] | None = None) -> dict[str, float]:
        """Seconds per megapixel of each eager path that runs this network (default: every candidate), keyed
        ``backend/pad``."""
        timed = {"{}/{}".format(*path): self.per_mpix(path) for path in (self.candidates if paths is None else paths)}
        return {name: seconds for name, seconds in timed.items() if seconds is not None}

    def accuracy(self, path: Path) -> Accuracy:
        """The path's accuracy against fp32 on the reference images (checked on first use, then cached)."""
        entry = self.cache.entry(self.accuracy_key)
        name = "{}/{}".format(*path)
        if name not in entry:
            found = _check_accuracy(self.model, self.device, self.precision, path)
            entry[name] = [found.db_change, found.max_abs]
            self.cache.save(self.accuracy_key, entry)
        return Accuracy(*entry[name])

    def compiled(self, pad: int) -> tuple[float, float] | None:
        """(compile seconds, seconds per megapixel) of ``compile``; None where it does not work here."""
        key = f"compile/{pad}"
        if key not in self.entry:
            try:
                self.entry[key] = list(self._measure("compile", pad))
            except Exception:  # no C++ compiler, unsupported platform: Inductor raises many kinds
                self.entry[key] = None
            self.cache.save(self.key, self.entry)
        value = self.entry[key]
        return tuple(value) if value else None


def choose(timings: Timings, shapes: Shapes | None = None, eager: dict[str, float] | None = None) -> Choice:
    """The back-end rule on measured ``timings`` (see the module docstring); ``shapes``: LR size -> forwards;
    ``eager``: the paths allowed (default: every candidate)."""
    eager = timings.eager() if eager is None else eager
    best_key = min(eager, key=eager.get)
    backend, pad = best_key.split("/")[0], int(best_key.split("/")[1])
    why = "fastest eager path measured on this machine"
    best = Choice(backend, pad, timings.precision, why)
    if not shapes or len(shapes) > MAX_COMPILED_SHAPES:
        return best
    shapes = Counter(shapes)
    mpix = {shape: shape[0] * shape[1] / 1e6 for shape in shapes}
    job_seconds = sum(n * mpix[s] * eager[best_key] for s, n in shapes.items())
    if job_seconds < MIN_JOB_SECONDS:
        return best
    compiled = timings.compiled(pad)
    if compiled is None:
        return Choice(backend, pad, timings.precision, why + "; compile unavailable")
    compile_seconds, per_mpix = compiled
    saved = sum(n * mpix[s] * (eager[best_key] - per_mpix) for s, n in shapes.items())
    if saved > len(shapes) * compile_seconds:
        why = f"compiling {len(shapes)} shape(s) (~{compile_seconds:.0f} s each) saves ~{saved:.0f} s"
        return Choice("compile", pad, timings.precision, why)
    return Choice(backend, pad, timings.precision, why + "; compiling would not pay for this job")


def choose_precision(
    described: ModelDescriptor, backend: str, device: torch.device, shapes: Shapes | None = None
) -> Choice:
    """``--precision auto`` (see the module docstring): the fastest path among the native precisions whose
    output stays within the reference bound of fp32, then the back-end rule for that precision."""
    size = shape_class(shapes)
    size_note = "{}x{}-class inputs".format(*size)
    if backend == "onnxruntime" or described.in_channels != 3:
        reason = "ONNX Runtime runs fp32 only" if backend == "onnxruntime" else "the reference images are RGB"
        return _with_reason(choose_backend(described, backend, device, "fp32", shapes), f"fp32: {reason}")
    timings: dict[str, Timings] = {}
    speed: dict[tuple[str, str], float] = {}  # (precision, "backend/pad") -> seconds per megapixel
    rejected: dict[str, Accuracy] = {}
    for precision in native_precisions(device):
        timings[precision] = found = Timings(described, device, precision, size, backend)
        accurate = found.candidates
        if precision != "fp32":  # checked first: a path outside the bound is never timed
            checked = {path: found.accuracy(path) for path in found.candidates}
            accurate = [path for path, acc in checked.items() if acc.ok]
            failed = [acc for acc in checked.values() if not acc.ok]
            if failed:
                rejected[precision] = failed[0]
        speed |= {(precision, name): seconds for name, seconds in found.eager(accurate).items()}
    precision = min(speed, key=speed.get)[0]
    fp32 = min(s for (p, _), s in speed.items() if p == "fp32")
    notes = []
    for other in timings:
        paths = {name: s for (p, name), s in speed.items() if p == other}
        if other != "fp32" and paths:
            name = min(paths, key=paths.get)
            acc = timings[other].accuracy((name.split("/")[0], int(name.split("/")[1])))
            notes.append(f"{other} {fp32 / paths[name]:.2f}x fp32's speed, {acc.describe()} vs fp32")
        elif other in rejected:
            notes.append(f"{other} outside the bound ({rejected[other].describe()})")
    if len(timings) == 1:
        notes.append("no reduced precision is native on this device")
    reason = f"{precision}: the fastest within the reference bound at {size_note} ({'; '.join(notes)})"
    if backend != "auto":
        return Choice(backend, 0, precision, reason)
    allowed = {name: s for (p, name), s in speed.items() if p == precision}
    return _with_reason(choose(timings[precision], shapes, allowed), reason)


def _with_reason(choice: Choice, reason: str) -> Choice:
    return Choice(choice.backend, choice.pad, choice.precision, f"{reason}; back-end: {choice.why}")


def choose_backend(
    described: ModelDescriptor, backend: str, device: torch.device, precision: str, shapes: Shapes | None = None
) -> Choice:
    """A fixed precision: ``backend`` as asked, or for ``auto`` the measured choice for this job."""
    if backend != "auto":
        return Choice(backend, 0, precision)
    return choose(Timings(described, device, precision, shape_class(shapes)), shapes)


def resolve(
    described: ModelDescriptor,
    backend: str,
    device: torch.device,
    precision: str = "fp32",
    shapes: Shapes | None = None,
) -> Choice:
    """``backend`` and ``precision`` as asked; ``auto`` for either is measured for this network, device and job."""
    check_combination(backend, device, precision)
    if precision == "auto":
        return choose_precision(described, backend, device, shapes)
    return choose_backend(described, backend, device, precision, shapes)
