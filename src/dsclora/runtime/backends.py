"""Ways to run a network fast: eager NCHW (the reference), channels_last, torch.compile, ONNX Runtime, and
reduced-precision policies. ``make_runner`` takes a model descriptor and returns a callable NCHW float32 [0, 1]
-> NCHW float32 [0, 1] (input range and padding applied by the descriptor); which back-end ``auto`` means is
decided in ``autotune`` alone.

Every path but the reference runs the architecture's faster inference form where it has one (SPAN:
``FusedSPAN``, same function, no channel concatenation; see its module).
Measured on this project's 2-core CPU (benchmarks/infer.py): NHWC (channels_last) suits oneDNN's 26-channel
convs; torch.compile with Inductor's weight freezing (constant-folded, pre-packed conv weights, SiLU and adds
fused into the convs as oneDNN post-ops) removes most element-wise passes. Freezing is an Inductor config
that must be active while a graph compiles, so the compiled runner patches it around every call (passed as
``torch.compile(options={"freezing": True})`` it left the convs unfrozen with torch 2.13: 10 % slower).

Plain bf16 autocast quantises every tensor, the output too, to an 8-bit mantissa (about half a grey level),
which costs 0.01-0.02 dB Y-PSNR. ``bf16-accurate`` runs the architecture's own bf16 form where it has one on a
CPU (SPAN: ``BF16SPAN``, block convs and projections in bf16, fp32 where bf16 would cost accuracy; see its
module) and otherwise a generic policy for any network: the input- and output-side convs (``fp32_layers``, or
the first and last conv) stay fp32, the others run in bf16 under autocast with kernel-sum-keeping weights
(``models.rounding``) and hand fp32 on, so every element-wise op stays fp32. ``benchmarks/infer.py`` measures
both against fp32 (speed, Y-PSNR on Set5 and B100); ``--precision auto`` (``autotune``) checks them on reference
images before it may choose them. On a CPU both generic policies keep grouped (e.g. depthwise) convs in fp32:
oneDNN's bf16 kernel for some of them stalls (torch 2.13 on an AMD Zen 4: HAESR's 1x31 depthwise conv, 12
channels, on a 32x32 channels-last input did not finish within 10 s in bf16, where fp32 took 0.12 ms; on 24x24
bf16 took 2 ms), and a depthwise conv, memory-bound, gains little from bf16 anyway.

On a GPU, fp32 means IEEE fp32 convs (cuDNN's TF32 default is switched off around each call); fp16 / bf16 are
autocast; ``cudnn.benchmark`` picks the fastest conv algorithm per shape; ``compile`` uses
``mode="max-autotune"`` (Triton / cuDNN kernel search plus CUDA graphs: one launch for the whole network).
``pad`` > 0 runs the network zero-padded to a width that is a multiple of ``pad`` where the architecture offers
exact channel padding (SPAN: ``models/span/padding.py``).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator

import torch
from torch import nn

from dsclora.data.images import check_image
from dsclora.errors import DscloraError
from dsclora.export.onnx import (
    TOLERANCE,
    OnnxOptions,
    check_graph,
    check_inputs,
    graph_network,
    onnx_bytes,
    settle_batch,
)
from dsclora.models.adapters import replace_module
from dsclora.models.descriptor import ImageInterface, ModelDescriptor
from dsclora.models.rounding import bf16_keeping_sums

BACKENDS = ("torch", "channels_last", "compile", "onnxruntime")  # what --backend names besides auto
PRECISIONS = ("fp32", "bf16", "bf16-accurate", "fp16")
Runner = Callable[[torch.Tensor], torch.Tensor]


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


@torch.no_grad()
def generic_bf16_policy(
    model: nn.Module, precision: str, fp32_layers: tuple[str, ...] = (), cpu: bool = False
) -> nn.Module:
    """``model`` (changed in place: callers hand it a private copy) prepared for bf16 autocast by one decision per
    conv: fp32 (``_Float32``), or bf16 handing fp32 on (``_Float32Output``, ``bf16-accurate`` only), or left to
    autocast (plain ``bf16``). fp32: on a CPU every grouped conv (see the module docstring), and for
    ``bf16-accurate`` the convs named by ``fp32_layers`` (the architecture's input- and output-side layers,
    e.g. SPAN's that read the x255 input or write the output; where it names none, the first and last conv in
    module order). ``bf16-accurate``'s bf16 convs get weights rounded keeping kernel sums (``models.rounding``)."""
    convs = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    accurate = precision == "bf16-accurate"
    keep = {name for name in convs if cpu and model.get_submodule(name).groups > 1}
    if accurate:
        keep |= {n for n in convs if n.startswith(fp32_layers)} if fp32_layers else {*convs[:1], *convs[-1:]}
    for name in convs:
        conv = model.get_submodule(name)
        if name in keep:
            replace_module(model, name, _Float32(conv))
        elif accurate:
            if conv.weight.dtype == torch.float32:
                conv.weight.copy_(bf16_keeping_sums(conv.weight))  # exact bf16 values: autocast's cast keeps them
            replace_module(model, name, _Float32Output(conv))
    return model


def _autocast_dtype(precision: str) -> torch.dtype | None:
    return {"fp32": None, "bf16": torch.bfloat16, "bf16-accurate": torch.bfloat16, "fp16": torch.float16}[precision]


@contextlib.contextmanager
def _ieee_fp32_convs() -> Iterator[None]:
    """cuDNN convs in true fp32 (PyTorch lets them use TF32, a 10-bit mantissa, by default on Ampere+)."""
    conv = torch.backends.cudnn.conv
    saved = conv.fp32_precision
    conv.fp32_precision = "ieee"
    try:
        yield
    finally:
        conv.fp32_precision = saved


def _torch_runner(
    model: nn.Module, device: torch.device, dtype: torch.dtype | None, channels_last: bool, compiled: bool = False
) -> Runner:
    """``dtype``: what autocast computes in (None: no autocast)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    if compiled:
        import torch._inductor.config as inductor_config  # pulls in dynamo (~1 s): only for compile
    exact_cuda = device.type == "cuda" and dtype is None
    # CUDA graphs (compile on a GPU) reuse their output buffer on the next call: hand out a copy
    owned = compiled and device.type == "cuda"

    @torch.inference_mode()
    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device).contiguous(memory_format=fmt)
        with (
            inductor_config.patch(freezing=True) if compiled else contextlib.nullcontext(),
            _ieee_fp32_convs() if exact_cuda else contextlib.nullcontext(),
            torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None),
        ):
            out = model(x).float().contiguous()
        return out.clone() if owned else out

    return run


class _OnnxNetwork(nn.Module):
    """An ONNX Runtime session as a module, so that ``ImageInterface`` pads and crops around it in torch."""

    def __init__(self, session, device: torch.device) -> None:
        super().__init__()
        self.session, self.device = session, device
        self.one_at_a_time = session.get_inputs()[0].shape[0] == 1  # a graph whose batch is fixed to 1

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"input": x.detach().cpu().float().contiguous().numpy()})[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([self._run(one) for one in x.split(1)]) if self.one_at_a_time else self._run(x)
        return out.to(self.device)


def _onnxruntime_runner(described: ModelDescriptor, model: nn.Module, device: torch.device, precision: str) -> Runner:
    """``model`` (of the descriptor's architecture) as a graph without padding: the padding to the descriptor's
    ``size_multiple`` is done here in torch, outside the graph (see ``export.onnx``). The graph is checked
    against torch at two small sizes first (``export.onnx.check_inputs``), so a network that pads itself in a way
    tracing freezes is refused instead of run wrong; a graph fixed to a batch of 1 runs a batch image by image."""
    if precision != "fp32":
        raise DscloraError("--backend onnxruntime runs fp32 only")
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.type == "cuda" else None
    network, multiple = graph_network(described, model)
    options = OnnxOptions(clamp=False, simplify=False)
    data = onnx_bytes(network, options, in_channels=described.in_channels, multiple=multiple)
    probe = check_image()[:, : described.in_channels, :48, :48]
    refusal = f"--backend onnxruntime cannot run {described.arch}: use --backend torch"
    inputs = check_inputs(probe, multiple)
    reference = described.runnable(model)
    _, session = settle_batch(data, reference, inputs[-1], TOLERANCE["fp32"], False, providers)
    check_graph(session, reference, inputs, TOLERANCE["fp32"], clamp=False, refusal=refusal)
    padded = ImageInterface(_OnnxNetwork(session, device), described.scale, size_multiple=multiple)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return padded(x)

    return run


def check_combination(backend: str, device: torch.device, precision: str) -> None:
    """Refuse, before any work, what cannot run: an unknown name, fp16 on a CPU, ONNX Runtime below fp32
    (``auto`` for either is resolved later, in ``autotune``, to something that runs)."""
    if backend not in ("auto", *BACKENDS):
        raise DscloraError(f"unknown backend {backend!r} (use auto, {', '.join(BACKENDS)})")
    if precision not in ("auto", *PRECISIONS):
        raise DscloraError(f"unknown precision {precision!r} (use auto, {', '.join(PRECISIONS)})")
    if precision == "fp16" and device.type == "cpu":
        raise DscloraError("--precision fp16 needs a GPU; on CPU use bf16 or bf16-accurate")
    if backend == "onnxruntime" and precision not in ("fp32", "auto"):
        raise DscloraError("--backend onnxruntime runs fp32 only")


def make_runner(
    described: ModelDescriptor, backend: str, device: torch.device, precision: str = "fp32", pad: int = 0
) -> Runner:
    """A callable for the descriptor's (merged) network, already on ``device``; ``backend`` is one of ``BACKENDS``;
    ``pad`` > 0 needs an architecture with exact channel padding."""
    check_combination(backend, device, precision)
    if "auto" in (backend, precision):
        raise ValueError("make_runner takes a concrete backend and precision; autotune.resolve decides what auto means")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one algorithm search per input shape, then the fastest kernel
    hooks = described.hooks
    if pad and hooks.pad_channels is None:
        raise DscloraError(f"{described.arch} offers no exact channel padding")
    source = hooks.pad_channels(described.module, pad) if pad else described.module
    # copies: memory formats and wrappers must not leak into the caller's model
    fast = backend != "torch" and hooks.fast_form is not None
    work = hooks.fast_form(source) if fast else copy.deepcopy(source).eval()
    for param in work.parameters():
        param.requires_grad_(False)
    autocast = _autocast_dtype(precision)
    cpu = device.type == "cpu"
    if precision == "bf16-accurate":
        own = hooks.accurate_bf16_form if fast and cpu else None
        work = own(work) if own is not None else generic_bf16_policy(work, precision, hooks.fp32_layers, cpu)
        autocast = None if own is not None else autocast  # the architecture's own form sets its dtypes itself
    elif precision == "bf16":
        work = generic_bf16_policy(work, precision, cpu=cpu)
    if backend == "onnxruntime":
        return _onnxruntime_runner(described, work, device, precision)
    work = described.runnable(work)
    if backend == "compile":
        mode = "max-autotune" if device.type == "cuda" else None
        compiled = torch.compile(work.to(memory_format=torch.channels_last), mode=mode)
        return _torch_runner(compiled, device, autocast, channels_last=True, compiled=True)
    return _torch_runner(work, device, autocast, channels_last=backend == "channels_last")
