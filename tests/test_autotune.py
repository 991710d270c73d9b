"""``--backend auto`` / ``--precision auto``: per-machine measurement is cached, compile is chosen only when the
job repays it, and a reduced precision only when it is native, within the reference bound and faster."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dsclora.errors import DscloraError
from dsclora.models.descriptor import ModelDescriptor
from dsclora.models.span import SPAN, SpanConfig
from dsclora.runtime import autotune
from dsclora.runtime.backends import PRECISIONS, check_combination
from dsclora.runtime.reference import MAX_ABS_CHANGE, MAX_DB_CHANGE, Accuracy
from dsclora.weights.sources.span import descriptor


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch) -> None:
    """A fresh auto cache per test: what one test measured must not answer another's questions."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture
def tiny() -> ModelDescriptor:
    return descriptor(SPAN(SpanConfig(channels=8, blocks=1, scale=2), deploy=True).eval(), "tiny", None, "0")


def fake_timings(monkeypatch, eager: dict[str, float], compiled: tuple[float, float] | None) -> list[str]:
    """Replace measurement by fixed (compile seconds, seconds per megapixel); return the log of what was timed."""
    timed: list[str] = []

    def measure(self, backend: str, pad: int) -> tuple[float, float]:
        timed.append(backend)
        if backend == "compile":
            if compiled is None:
                raise RuntimeError("no compiler")
            return compiled
        return 0.0, eager[backend]

    monkeypatch.setattr(autotune.Timings, "_measure", measure)
    monkeypatch.setattr(autotune, "_candidates", lambda described, device, precision: [(name, 0) for name in eager])
    return timed


def choose(model: ModelDescriptor, shapes=None) -> autotune.Choice:
    return autotune.resolve(model, "auto", torch.device("cpu"), "fp32", shapes)


@pytest.mark.parametrize(("call_seconds", "calls"), [(0.5, 1 + 3), (3.0, 1 + 1)])
def test_a_slow_path_is_timed_with_one_repeat(monkeypatch, call_seconds: float, calls: int) -> None:
    """A path whose first call is slow is timed once more, not ``repeats`` times (a clock that the fake
    runner advances: no real timing)."""
    clock = [0.0]
    made: list[int] = []

    def runner(x: torch.Tensor) -> None:
        made.append(1)
        clock[0] += call_seconds

    monkeypatch.setattr(autotune.time, "perf_counter", lambda: clock[0])
    first, steady = autotune._timed(runner, torch.zeros(1), torch.device("cpu"), repeats=3)
    assert len(made) == calls and first == steady == call_seconds


def test_a_path_that_refuses_the_network_is_skipped_and_remembered(monkeypatch, tiny) -> None:
    """ONNX Runtime refuses a network whose padding a trace would freeze: auto takes the next fastest path, and
    the refusal is cached like a timing (not tried again)."""
    timed = fake_timings(monkeypatch, {"torch": 2.0, "channels_last": 1.5, "onnxruntime": 1.0}, None)
    real = autotune.Timings._measure

    def refusing(self, backend: str, pad: int) -> tuple[float, float]:
        if backend == "onnxruntime":
            timed.append(backend)
            raise DscloraError("--backend onnxruntime cannot run tiny: use --backend torch")
        return real(self, backend, pad)

    monkeypatch.setattr(autotune.Timings, "_measure", refusing)
    assert choose(tiny).backend == "channels_last"
    assert choose(tiny).backend == "channels_last"
    assert timed == ["torch", "channels_last", "onnxruntime"]


def test_eager_choice_is_measured_once_and_cached(monkeypatch, tiny) -> None:
    timed = fake_timings(monkeypatch, {"torch": 2.0, "channels_last": 1.0}, (20.0, 0.5))
    assert choose(tiny).backend == "channels_last"
    assert choose(tiny).backend == "channels_last"
    assert timed == ["torch", "channels_last"]  # the second call read the cache; compile was never timed


def test_a_new_dsclora_version_measures_again(monkeypatch, tiny) -> None:
    """Its paths may compute differently: another release's timings are not reused."""
    timed = fake_timings(monkeypatch, {"torch": 2.0, "channels_last": 1.0}, None)
    choose(tiny)
    monkeypatch.setattr(autotune, "__version__", "999.0")
    choose(tiny)
    assert timed == ["torch", "channels_last"] * 2


def test_compile_only_when_the_job_repays_it(monkeypatch, tiny) -> None:
    timed = fake_timings(monkeypatch, {"torch": 2.0, "channels_last": 1.0}, (20.0, 0.5))
    # 1000x1000 = 1 Mpix per forward: eager 1.0 s, compiled 0.5 s, so each forward saves 0.5 s.
    # 20 forwards = 20 s of work: below MIN_JOB_SECONDS, compile is not even timed.
    assert choose(tiny, {(1000, 1000): 20}).backend == "channels_last"
    assert "compile" not in timed
    # 50 forwards save 25 s > one 20 s compile; 2 shapes x 30 forwards save 30 s < two compiles (40 s).
    assert choose(tiny, {(1000, 1000): 50}) == autotune.Choice(
        "compile", 0, "fp32", "compiling 1 shape(s) (~20 s each) saves ~25 s"
    )
    assert choose(tiny, {(1000, 1000): 30, (500, 2000): 30}).backend == "channels_last"
    # more shapes than dynamo recompiles: never compile
    many = {(1000, 1000 + i): 1000 for i in range(autotune.MAX_COMPILED_SHAPES + 1)}
    assert choose(tiny, many).backend == "channels_last"
    assert timed.count("compile") == 1


def test_compile_unavailable_falls_back(monkeypatch, tiny) -> None:
    fake_timings(monkeypatch, {"torch": 1.0}, None)
    choice = choose(tiny, {(1000, 1000): 1000})
    assert choice.backend == "torch" and "compile unavailable" in choice.why


def test_explicit_backend_is_not_measured(monkeypatch, tiny) -> None:
    timed = fake_timings(monkeypatch, {"torch": 1.0}, None)
    assert autotune.resolve(tiny, "channels_last", torch.device("cpu")) == autotune.Choice("channels_last")
    assert autotune.resolve(tiny, "torch", torch.device("cpu"), "bf16") == autotune.Choice("torch", 0, "bf16")
    assert timed == []


def test_auto_times_only_paths_that_can_run() -> None:
    """Every eager path auto would time passes the same check a user's --backend / --precision choice must pass
    (e.g. ONNX Runtime only at fp32, where it is installed), on a CPU and on a GPU."""
    span = descriptor(SPAN(SpanConfig(channels=8, blocks=1), deploy=True), "tiny", None, "0")
    for device, precisions in (("cpu", ("fp32", "bf16", "bf16-accurate")), ("cuda", PRECISIONS)):
        for precision in precisions:
            candidates = autotune._candidates(span, torch.device(device), precision)
            assert candidates  # at least one path to time at every precision
            for backend, _pad in candidates:
                check_combination(backend, torch.device(device), precision)


def test_cpu_identity_tells_apart_cpus_of_one_name(tmp_path) -> None:
    """Two VMs both called "AMD EPYC" (a Zen 3 without bf16, a Zen 4 with it) must not share auto's cache."""
    from dsclora.devices import cpu_model

    def cpuinfo(model: int, flags: str) -> Path:
        path = tmp_path / f"cpuinfo{model}"
        cores = [f"processor\t: {i}\nmodel name\t: AMD EPYC\ncpu family\t: 25\nmodel\t\t: {model}\nflags\t\t: {flags}"
                 for i in range(2)]  # fmt: skip
        path.write_text("\n\n".join(cores) + "\n")
        return path

    assert cpu_model(cpuinfo(1, "fpu sse2 avx avx2 fma")) == "AMD EPYC (family 25 model 1, avx2)"
    zen4 = cpu_model(cpuinfo(17, "avx2 avx512f avx512_bf16 avx512_vnni"))
    assert zen4 == "AMD EPYC (family 25 model 17, avx512_bf16, avx512f)"
    import platform

    assert cpu_model(tmp_path / "absent") == (platform.processor() or platform.machine())  # no /proc: platform's


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path) -> None:
    """Training's bf16 warning: AVX512-BF16 / AMX (x86) or the Arm bf16 feature count, AVX2 / AVX-512F do not."""
    from dsclora.devices import native_bf16

    def cpuinfo(line: str) -> Path:
        path = tmp_path / f"cpuinfo{abs(hash(line))}"
        path.write_text(f"processor\t: 0\n{line}\n\nprocessor\t: 1\nflags\t\t: amx_bf16\n")  # only the first counts
        return path

    cpu = torch.device("cpu")
    assert not native_bf16(cpu, cpuinfo("flags\t\t: fpu avx2 fma avx512f"))
    assert native_bf16(cpu, cpuinfo("flags\t\t: avx2 avx512f avx512_bf16"))
    assert native_bf16(cpu, cpuinfo("flags\t\t: avx512f amx_bf16 amx_tile"))
    assert native_bf16(cpu, cpuinfo("Features\t: fp asimd sve bf16 i8mm"))
    assert not native_bf16(cpu, cpuinfo("Features\t: fp asimd"))
    assert not native_bf16(cpu, tmp_path / "absent")


# ------------------------------------------------------------------------------------------------ precision auto


def fake_precisions(
    monkeypatch, speeds: dict[tuple[str, str], float], accuracies: dict[str, Accuracy], native: bool = True
) -> tuple[list[tuple[str, str]], list[str]]:
    """Fixed seconds per megapixel per (precision, backend) and accuracy per reduced precision; whether the CPU
    computes bf16 natively. Returns the logs of what was timed and what was checked."""
    timed: list[tuple[str, str]] = []
    checked: list[str] = []

    def measure(self, backend: str, pad: int) -> tuple[float, float]:
        timed.append((self.precision, backend))
        return 0.0, speeds[self.precision, backend]

    def check(described, device, precision, path) -> Accuracy:
        checked.append(precision)
        return accuracies[precision]

    backends = sorted({backend for _, backend in speeds})
    monkeypatch.setattr(autotune.Timings, "_measure", measure)
    monkeypatch.setattr(autotune, "_check_accuracy", check)
    monkeypatch.setattr(autotune, "_candidates", lambda described, device, precision: [(b, 0) for b in backends])
    monkeypatch.setattr(autotune, "native_bf16", lambda device: native)
    return timed, checked


WITHIN = Accuracy(-0.001, 2 / 255)
OUTSIDE_DB = Accuracy(-MAX_DB_CHANGE - 0.001, 2 / 255)
OUTSIDE_MAX = Accuracy(0.0, MAX_ABS_CHANGE + 1 / 255)
SPEEDS = {
    ("fp32", "channels_last"): 4.0,
    ("fp32", "onnxruntime"): 3.0,
    ("bf16-accurate", "channels_last"): 2.0,
    ("bf16-accurate", "onnxruntime"): 9.0,  # never a real path: only checks that the fastest is taken
    ("bf16", "channels_last"): 1.0,
    ("bf16", "onnxruntime"): 9.0,
}


def auto(model: ModelDescriptor, backend: str = "auto", shapes=None) -> autotune.Choice:
    return autotune.resolve(model, backend, torch.device("cpu"), "auto", shapes)


def test_auto_precision_takes_the_fastest_path_within_the_bound(monkeypatch, tiny) -> None:
    timed, checked = fake_precisions(monkeypatch, SPEEDS, {"bf16-accurate": WITHIN, "bf16": OUTSIDE_DB})
    choice = auto(tiny)
    assert (choice.precision, choice.backend) == ("bf16-accurate", "channels_last")
    assert "1.50x fp32's speed" in choice.why and "bf16 outside the bound (-0.0060 dB" in choice.why
    assert not [t for t in timed if t[0] == "bf16"]  # faster, but outside the bound: never even timed
    assert sorted(set(checked)) == ["bf16", "bf16-accurate"]  # fp32 is the reference, never checked
    assert auto(tiny) == choice and len(checked) == 4  # the second time from the cache: nothing checked again


def test_auto_precision_without_an_accurate_reduced_path_is_fp32(monkeypatch, tiny) -> None:
    """The max-abs bound rejects as well as the dB bound; then fp32's fastest path is the answer."""
    timed, _ = fake_precisions(monkeypatch, SPEEDS, {"bf16-accurate": OUTSIDE_MAX, "bf16": OUTSIDE_DB})
    choice = auto(tiny)
    assert (choice.precision, choice.backend) == ("fp32", "onnxruntime")
    assert {precision for precision, _ in timed} == {"fp32"}


def test_auto_precision_on_emulated_bf16_is_exactly_the_fp32_choice(monkeypatch, tiny) -> None:
    """A CPU without native bf16 (e.g. AMD Zen 3): no reduced precision is checked or timed, and the answer is
    the one ``--precision fp32`` gets."""
    timed, checked = fake_precisions(monkeypatch, SPEEDS, {"bf16-accurate": WITHIN, "bf16": WITHIN}, native=False)
    choice = auto(tiny, shapes={(500, 500): 3})
    fp32 = autotune.resolve(tiny, "auto", torch.device("cpu"), "fp32", {(500, 500): 3})
    assert (choice.backend, choice.pad, choice.precision) == (fp32.backend, fp32.pad, "fp32")
    assert checked == [] and {precision for precision, _ in timed} == {"fp32"}
    assert "no reduced precision is native on this device" in choice.why


def test_explicit_precision_always_wins(monkeypatch, tiny) -> None:
    timed, checked = fake_precisions(monkeypatch, SPEEDS, {"bf16-accurate": WITHIN, "bf16": OUTSIDE_DB})
    assert autotune.resolve(tiny, "auto", torch.device("cpu"), "bf16").precision == "bf16"  # outside, but asked
    assert checked == [] and {precision for precision, _ in timed} == {"bf16"}


def test_auto_precision_with_a_fixed_backend_times_only_that_backend(monkeypatch, tiny) -> None:
    timed, _ = fake_precisions(monkeypatch, SPEEDS, {"bf16-accurate": WITHIN, "bf16": WITHIN})
    choice = auto(tiny, backend="onnxruntime")
    assert (choice.precision, choice.backend) == ("fp32", "onnxruntime")  # ONNX Runtime runs fp32 only
    assert timed == []  # nothing to choose between: not timed
    choice = auto(tiny, backend="channels_last")
    assert (choice.precision, choice.backend) == ("bf16", "channels_last")
    assert {backend for _, backend in timed} == {"channels_last"}


def test_shape_class_is_that_of_the_shape_holding_most_pixels() -> None:
    assert autotune.shape_class(None) == (256, 256)
    assert autotune.shape_class({(100, 100): 1}) == (128, 128)  # 10,000 px <= 150 x 150
    assert autotune.shape_class({(300, 300): 1}) == (256, 256)  # 90,000 px <= 320 x 320
    assert autotune.shape_class({(963, 1443): 1}) == (270, 480)
    # 40 small tiles hold more pixels than one large image
    assert autotune.shape_class({(100, 100): 40, (400, 400): 1}) == (128, 128)


def test_cache_key_names_cpu_network_backend_and_shape_class(monkeypatch, tiny) -> None:
    cpu = torch.device("cpu")
    other = descriptor(SPAN(SpanConfig(channels=8, blocks=1, scale=2), deploy=True).eval(), "tiny", None, "1")

    def key(described=tiny, backend="auto", size=(256, 256)) -> str:
        return autotune.Timings(described, cpu, "bf16-accurate", size, backend).key

    base = key()
    assert key(other) != base  # another network (its identity: weights and code digest)
    assert key(backend="torch") != base
    assert key(size=(128, 128)) != base
    monkeypatch.setattr(autotune, "device_name", lambda device: "another CPU x2 threads")
    assert key() != base
    assert other.identity != tiny.identity


def test_a_path_with_non_finite_output_is_never_within_the_bound() -> None:
    """A network that gives NaN must not look exact ("+0.0000 dB, max 0/255") to auto's reference check."""
    from dsclora.runtime.reference import accuracy

    def nan_net(x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 3, x.shape[2] * 2, x.shape[3] * 2), float("nan"))

    found = accuracy(nan_net, nan_net, 2, torch.device("cpu"))
    assert not found.ok and found.describe() == "NaN / Inf in the output"
