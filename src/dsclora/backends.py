"""Ways to run a deploy-form SPAN fast: eager NCHW (the reference), channels_last, torch.compile, ONNX Runtime,
and reduced-precision policies. ``make_runner`` returns a callable NCHW float32 -> NCHW float32.

Measured on this project's 2-core CPU (benchmarks/infer.py): NHWC (channels_last) suits oneDNN's 26-channel
convs; torch.compile with Inductor's weight freezing (constant-folded, pre-packed conv weights) adds element-wise
fusion on top. Plain bf16 autocast is ~3x faster than eager fp32 but quantises every tensor, the output too,
to an 8-bit mantissa (about half a grey level), which costs 0.01-0.016 dB Y-PSNR. ``bf16-accurate`` runs only
the 18 block convs in bf16 and keeps their outputs, every element-wise op and the four head / tail convs
(conv_1 on the x255 input, conv_cat, conv_2, upsampler) in fp32: within 0.005 dB of fp32; compiled, it is
also ~3x faster than eager fp32.
"""

from __future__ import annotations

import copy
import io
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from dsclora.errors import DscloraError
from dsclora.models.span import SPAN
from dsclora.utils import user_cache_dir

BACKENDS = ("auto", "torch", "channels_last", "compile", "onnxruntime")
PRECISIONS = ("fp32", "bf16", "bf16-accurate", "fp16")
Runner = Callable[[torch.Tensor], torch.Tensor]
FP32_CONVS = ("conv_1", "conv_cat", "conv_2", "upsampler")  # kept in fp32 by bf16-accurate


class _Float32(nn.Module):
    """Runs a conv in fp32 even under autocast."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.conv(x.float())


class _Float32Output(nn.Module):
    """Runs a conv under autocast but hands an fp32 tensor to what follows."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).float()


def accurate_bf16_copy(model: SPAN) -> SPAN:
    """A copy for ``bf16-accurate``: head / tail convs fp32, block convs bf16 with fp32 outputs."""
    work = copy.deepcopy(model)
    for name, module in list(work.named_modules()):
        if isinstance(module, nn.Conv2d):
            parent_name, _, child = name.rpartition(".")
            parent = work.get_submodule(parent_name) if parent_name else work
            keep = name.startswith(FP32_CONVS)
            setattr(parent, child, _Float32(module) if keep else _Float32Output(module))
    return work


def _autocast_dtype(precision: str) -> torch.dtype | None:
    return {"fp32": None, "bf16": torch.bfloat16, "bf16-accurate": torch.bfloat16, "fp16": torch.float16}[precision]


def _torch_runner(model: nn.Module, device: torch.device, precision: str, channels_last: bool) -> Runner:
    dtype = _autocast_dtype(precision)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)

    @torch.inference_mode()
    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device).contiguous(memory_format=fmt)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            return model(x).float().contiguous()

    return run


def _onnxruntime_runner(model: SPAN, device: torch.device, precision: str) -> Runner:
    if precision != "fp32":
        raise DscloraError("--backend onnxruntime runs fp32 only")
    try:
        import onnxruntime as ort
    except ImportError:
        raise DscloraError("--backend onnxruntime needs onnxruntime: pip install 'dsclora[onnx]'") from None
    buffer = io.BytesIO()
    dynamic = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.cpu().eval(),
            (torch.rand(1, model.config.in_channels, 32, 32),),
            buffer,
            input_names=["input"],
            output_names=["output"],
            opset_version=17,
            dynamic_axes={"input": dynamic, "output": dynamic},
            dynamo=False,
        )
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.type == "cuda" else ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    threads = torch.get_num_threads()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(buffer.getvalue(), options, providers=providers)

    def run(x: torch.Tensor) -> torch.Tensor:
        out = session.run(None, {"input": x.detach().cpu().float().contiguous().numpy()})[0]
        return torch.from_numpy(out).to(device)

    return run


def make_runner(model: SPAN, backend: str, device: torch.device, precision: str = "fp32") -> tuple[Runner, str]:
    """(callable, resolved backend name) for a deploy-form ``model`` already on ``device``."""
    if backend not in BACKENDS:
        raise DscloraError(f"unknown backend {backend!r} (use {', '.join(BACKENDS)})")
    if precision not in PRECISIONS:
        raise DscloraError(f"unknown precision {precision!r} (use {', '.join(PRECISIONS)})")
    if precision == "fp16" and device.type == "cpu":
        raise DscloraError("--precision fp16 needs a GPU; on CPU use bf16 or bf16-accurate")
    model = copy.deepcopy(model).eval()  # memory formats and wrappers must not leak into the caller's model
    if precision == "bf16-accurate":
        model = accurate_bf16_copy(model)
    if backend == "auto":
        backend = fastest_exact_backend(model, device) if precision == "fp32" else "channels_last"
    if backend == "onnxruntime":
        return _onnxruntime_runner(model, device, precision), backend
    if backend == "compile":
        # freezing: weights become constants, so Inductor pre-packs the convs (inference only)
        compiled = torch.compile(model.to(memory_format=torch.channels_last), options={"freezing": True})
        return _torch_runner(compiled, device, precision, channels_last=True), backend
    return _torch_runner(model, device, precision, channels_last=backend == "channels_last"), backend


# --------------------------------------------------------------------------------------------- auto


def _auto_cache() -> Path:
    return user_cache_dir("auto_backend.json")


def _candidates() -> list[str]:
    names = ["torch", "channels_last"]
    try:
        import onnxruntime  # noqa: F401

        names.append("onnxruntime")
    except ImportError:
        pass
    return names


def fastest_exact_backend(model: SPAN, device: torch.device, size: int = 128, repeats: int = 3) -> str:
    """Time each exact fp32 path once per machine (cached by device, threads, versions, width)."""
    key = f"{device}|{torch.get_num_threads()}|{torch.__version__}|C{model.config.channels}|{'+'.join(_candidates())}"
    cache = _auto_cache()
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    x = torch.rand(1, model.config.in_channels, size, size, device=device)
    timings = {}
    for name in _candidates():
        runner, _ = make_runner(copy.deepcopy(model), name, device)
        runner(x)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            runner(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        timings[name] = best
    choice = min(timings, key=timings.get)
    known[key] = choice
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(known, indent=1))
    except OSError:
        pass
    return choice
