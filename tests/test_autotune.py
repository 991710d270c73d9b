"""``--backend auto``: per-machine measurement is cached, and compile is chosen only when the job repays it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dsclora.models.descriptor import ModelDescriptor
from dsclora.models.span import SPAN, SpanConfig
from dsclora.runtime import autotune
from dsclora.runtime.backends import PRECISIONS, check_combination
from dsclora.weights.sources.span import descriptor


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
    return autotune.resolve_backend(model, "auto", torch.device("cpu"), "fp32", shapes)


def test_eager_choice_is_measured_once_and_cached(monkeypatch, tiny) -> None:
    timed = fake_timings(monkeypatch, {"torch": 2.0, "channels_last": 1.0}, (20.0, 0.5))
    assert choose(tiny).backend == "channels_last"
    assert choose(tiny).backend == "channels_last"
    assert timed == ["torch", "channels_last"]  # the second call read the cache; compile was never timed


def test_compile_only_when_the_job_repays_it(monkeypatch, tiny) -> None:
    timed = fake_timings(monkeypatch, {"torch": 2.0, "channels_last": 1.0}, (20.0, 0.5))
    # 1000x1000 = 1 Mpix per forward: eager 1.0 s, compiled 0.5 s, so each forward saves 0.5 s.
    # 20 forwards = 20 s of work: below MIN_JOB_SECONDS, compile is not even timed.
    assert choose(tiny, {(1000, 1000): 20}).backend == "channels_last"
    assert "compile" not in timed
    # 50 forwards save 25 s > one 20 s compile; 2 shapes x 30 forwards save 30 s < two compiles (40 s).
    assert choose(tiny, {(1000, 1000): 50}) == autotune.Choice(
        "compile", 0, "compiling 1 shape(s) (~20 s each) saves ~25 s"
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
    assert autotune.resolve_backend(tiny, "channels_last", torch.device("cpu")) == autotune.Choice("channels_last")
    assert timed == []


def test_auto_times_only_paths_that_can_run() -> None:
    """Every eager path auto would time passes the same check a user's --backend / --precision choice must pass
    (e.g. ONNX Runtime only at fp32, where it is installed), on a CPU and on a GPU."""
    span = descriptor(SPAN(SpanConfig(channels=8, blocks=1), deploy=True), "tiny", None, "0")
    for device, precisions in (("cpu", ("fp32", "bf16", "bf16-accurate")), ("cuda", PRECISIONS)):
        for precision in precisions:
            candidates = autotune._candidates(span, torch.device(device), precision)
            assert ("torch", 0) in candidates  # the reference path is always among them
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
