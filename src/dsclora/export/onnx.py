"""ONNX: the one graph builder (used by ``dsclora export`` and by the ONNX Runtime back-end) and checked files.

The graph is the merged network with its input range inside (the file takes and gives RGB in [0, 1]) and
dynamic batch / height / width, or one fixed input size (``static``), which TensorRT and some mobile runtimes
prefer. Padding to the size a network needs (the descriptor's ``size_multiple``) stays OUTSIDE a dynamic graph:
TorchScript tracing records the pad amounts of the traced size as constants, so a graph with the padding inside
is right only at sizes padded like the traced one (a CRAFT graph traced at 32x32 was 0.54 off at 72x72). Such a
graph takes heights and widths that are multiples of ``size_multiple`` (in its metadata, ``size_multiple``);
callers pad and crop (``runtime.backends`` does). A graph wrong for a batch of two has its batch fixed to 1
(``settle_batch``). A static graph keeps the padding inside: its one size is the
traced one. Every graph is checked in ONNX Runtime against torch at two input sizes, one of them not the traced
size and, where the graph takes any size, a multiple of neither 8 nor 16 (``check_inputs``).

``fp16`` stores weights and computes in half
precision; its inputs and outputs stay float32 unless ``io="fp16"`` (cast nodes at both ends), so callers need
not change. ``io="fp16"`` with ``precision="fp32"`` is fp32 compute behind fp16 inputs and outputs (half the
bytes to move, fp32 accuracy inside); its check allows for the fp16 rounding of the output. Exported files clamp
the output to [0, 1] (the network itself does not) and carry the scale and
the architecture in the model's metadata (``metadata_props``). Where ``onnxslim`` is installed the graph is
simplified with it (constant folding, fused casts); the ONNX Runtime check runs on the final bytes.
"""

from __future__ import annotations

import copy
import io
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from dsclora.errors import DscloraError
from dsclora.export.capture import captured_output
from dsclora.fs import atomic_write
from dsclora.models.descriptor import ImageInterface, ModelDescriptor

OPSET = 17
TOLERANCE = {"fp32": 1e-4, "fp16": 5e-3}  # max abs difference to torch fp32 on a real image, [0, 1] scale
# fp16 input / output round each value in [0, 1] to the nearest fp16: at most half a step of 2^-11 (below 1)
FP16_IO_ROUNDING = 2.0**-12


def opset_range() -> tuple[int, int]:
    """The opsets torch's TorchScript exporter (the one used here) writes."""
    from torch.onnx import _constants

    newest = getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", _constants.ONNX_MAX_OPSET)
    return int(_constants.ONNX_MIN_OPSET), int(newest)


def check_options(options: OnnxOptions) -> None:
    """Refuse, before any work, what the exporter cannot write."""
    oldest, newest = opset_range()
    if not oldest <= options.opset <= newest:
        raise DscloraError(f"--opset {options.opset}: torch {torch.__version__} exports opsets {oldest}-{newest}")


@dataclass(frozen=True)
class OnnxOptions:
    opset: int = OPSET
    precision: Literal["fp32", "fp16"] = "fp32"
    io: Literal["fp32", "fp16"] = "fp32"  # dtype of the graph's input and output
    static: tuple[int, int] | None = None  # fixed (height, width) of the input; None = dynamic
    clamp: bool = True  # clamp the output to [0, 1]
    simplify: bool = True  # with onnxslim, where installed


class _Graph(nn.Module):
    """What is exported: casts at the ends, the network in its precision, the clamp."""

    def __init__(self, model: nn.Module, options: OnnxOptions) -> None:
        super().__init__()
        dtype = torch.float16 if options.precision == "fp16" else torch.float32
        self.model = model.to(dtype)
        self.dtype = dtype
        self.io = torch.float16 if options.io == "fp16" else torch.float32
        self.clamp = options.clamp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x.to(self.dtype))
        if self.clamp:
            out = out.clamp(0.0, 1.0)
        return out.to(self.io)


def _simplified(data: bytes) -> bytes:
    try:
        import onnx
        import onnxslim
    except ImportError:
        return data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return onnxslim.slim(onnx.load_from_string(data)).SerializeToString()


def graph_network(
    described: ModelDescriptor, module: nn.Module | None = None, static: bool = False
) -> tuple[nn.Module, int]:
    """What a graph of ``module`` (default: the descriptor's) holds, and the multiple its input sizes must be.

    A dynamic graph holds the input range but not the padding (see the module docstring): its inputs must be
    multiples of ``size_multiple``. A static graph holds both and takes its one size."""
    if static or described.size_multiple == 1:
        return described.runnable(module), 1
    net = described.module if module is None else module
    return ImageInterface(net, described.scale, described.input_range), described.size_multiple


def traced_size(multiple: int) -> tuple[int, int]:
    """The input size a dynamic graph is traced at: about 32x32, a multiple of ``multiple``."""
    side = max(32 // multiple, 1) * multiple
    return side, side


def _sized(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``image`` cropped (tiled first where it is smaller) to ``height`` x ``width``."""
    reps = (1, 1, -(-height // image.shape[2]), -(-width // image.shape[3]))
    return image.repeat(reps)[:, :, :height, :width]


def check_inputs(probe: torch.Tensor, multiple: int = 1, static: tuple[int, int] | None = None) -> list[torch.Tensor]:
    """The single images a graph is checked on, cut from the real image ``probe``: a static graph's one size;
    else the probe cut to a multiple of ``multiple``, and another size that is not the traced one and, for a
    graph that takes any size, a multiple of neither 8 nor 16 (23x29), else ``multiple`` times odd numbers (3
    and 5): sizes where pad amounts baked in at trace time would show."""
    if static:
        h, w = static
        if probe.shape[2] < h or probe.shape[3] < w:
            raise DscloraError(f"the check image is smaller than the static input size {h}x{w}")
        return [probe[:, :, :h, :w]]
    m = multiple
    first = _sized(probe, max(probe.shape[2] // m, 1) * m, max(probe.shape[3] // m, 1) * m)
    return [first, _sized(probe, *((23, 29) if m == 1 else (3 * m, 5 * m)))]


def _batch_of_one(data: bytes) -> bytes:
    """The graph with its batch fixed to 1 (and ``batch`` 1 in its metadata)."""
    import onnx

    proto = onnx.load_from_string(data)
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1  # replaces the symbolic "batch"
    entry = proto.metadata_props.add()
    entry.key, entry.value = "batch", "1"
    return proto.SerializeToString()


def settle_batch(
    data: bytes, reference: nn.Module, x: torch.Tensor, tolerance: float, clamp: bool, providers=None
) -> tuple[bytes, object]:
    """``data`` and its session where the graph is right for a batch of two (``x`` and its mirror image), else
    the graph with its batch fixed to 1: some networks compute their batch size with ``int()`` from shapes
    (spandrel's CRAFT, ``windows2img``), which tracing freezes at the traced batch of 1."""
    session = onnxruntime_session(data, providers)
    try:
        check_graph(session, reference, [torch.cat([x, x.flip(-1)])], tolerance, clamp, "")
    except DscloraError:
        data = _batch_of_one(data)
        session = onnxruntime_session(data, providers)
    return data, session


def check_graph(
    session, reference: nn.Module, inputs: list[torch.Tensor], tolerance: float, clamp: bool, refusal: str
) -> float:
    """The largest abs difference of the graph in ``session`` to ``reference`` (torch fp32) over ``inputs``
    (outputs clamped alike where ``clamp``); a difference above ``tolerance``, a wrong shape or a size ONNX
    Runtime cannot run raises a one-line DscloraError ending in ``refusal``."""
    reference = copy.deepcopy(reference).float().cpu().eval()
    worst = 0.0
    for x in inputs:
        size = "{}x{}".format(*x.shape[2:])
        feed = x.numpy()
        try:
            got = session.run(None, {"input": feed})[0].astype(np.float32)
        except Exception as error:  # ONNX Runtime raises its own exception types (Fail, InvalidArgument, ...)
            lines = str(error).strip().splitlines() or [type(error).__name__]
            raise DscloraError(f"ONNX Runtime cannot run the graph at {size} ({lines[0]}); {refusal}") from None
        with torch.no_grad():
            want = reference(torch.from_numpy(feed.astype(np.float32)))
        want = (want.clamp(0, 1) if clamp else want).numpy()
        if got.shape != want.shape:
            raise DscloraError(f"ONNX Runtime gives {got.shape} at {size}, torch {want.shape}; {refusal}")
        diff = float(np.abs(got - want).max())
        if not diff <= tolerance:
            raise DscloraError(
                f"ONNX Runtime output differs from torch by {diff:.2e} at {size} (> {tolerance:.0e}); {refusal}"
            )
        worst = max(worst, diff)
    return worst


def onnx_bytes(
    model: nn.Module,
    options: OnnxOptions = OnnxOptions(),
    metadata: dict[str, str] | None = None,
    in_channels: int = 3,
    multiple: int = 1,
) -> bytes:
    """The serialised ONNX graph of ``model`` (any module mapping NCHW [0, 1] images to NCHW [0, 1] images),
    traced at a size that is a multiple of ``multiple`` (the multiple ``graph_network`` says the graph takes)."""
    try:
        import onnx
    except ImportError:
        raise DscloraError("ONNX needs the onnx package: pip install 'dsclora[onnx]'") from None
    graph = _Graph(copy.deepcopy(model).cpu().eval(), options)
    h, w = options.static or traced_size(multiple)
    sample = torch.rand(1, in_channels, h, w).to(graph.io)
    dynamic = None if options.static else {0: "batch", 2: "height", 3: "width"}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its own deprecation
        try:  # a failed export prints the whole TorchScript graph from C++: kept out of the terminal
            with tempfile.TemporaryDirectory() as work, captured_output(Path(work) / "exporter.log"):
                torch.onnx.export(
                    graph,
                    (sample,),
                    buffer,
                    input_names=["input"],
                    output_names=["output"],
                    opset_version=options.opset,
                    dynamic_axes={"input": dynamic, "output": dynamic} if dynamic else None,
                    dynamo=False,
                )
        except Exception as exc:  # the tracer raises many kinds (unsupported operator, symbolic value, ...)
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split("  [Caused by")[0][:300]
            raise DscloraError(f"{type(model).__name__} cannot be exported to ONNX: {reason}") from None
    data = _simplified(buffer.getvalue()) if options.simplify else buffer.getvalue()
    if metadata:
        proto = onnx.load_from_string(data)
        onnx.helper.set_model_props(proto, {str(k): str(v) for k, v in metadata.items()})
        data = proto.SerializeToString()
    return data


def onnxruntime_session(data: bytes, providers: list[str] | None = None, threads: int | None = None):
    """An ONNX Runtime session whose idle workers do not spin.

    ORT's workers spin-wait by default and take the cores from whatever runs next in the process (measured
    here: a torch path or image decoding beside it ran 40 % slower while they spun).
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise DscloraError("ONNX Runtime is not installed: pip install 'dsclora[onnx]'") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(data, options, providers=providers or ["CPUExecutionProvider"])


def export_onnx(
    described: ModelDescriptor,
    path: str | Path,
    probe: torch.Tensor,
    options: OnnxOptions = OnnxOptions(),
    metadata: dict[str, str] | None = None,
) -> float:
    """Write an ONNX file atomically after checking it in ONNX Runtime against torch fp32 on ``check_inputs``
    (cut from ``probe``). Returns the max abs difference (outputs clamped alike); raises, writing nothing, above
    ``TOLERANCE``. A dynamic graph records the multiple its sizes must be in its metadata (``size_multiple``),
    and ``batch`` 1 where its batch had to be fixed (``settle_batch``)."""
    check_options(options)
    network, multiple = graph_network(described, static=options.static is not None)
    metadata = {**(metadata or {}), "size_multiple": str(multiple)}
    data = onnx_bytes(network, options, metadata, described.in_channels, multiple)
    io_dtype = torch.float16 if options.io == "fp16" else torch.float32
    inputs = [x.to(io_dtype) for x in check_inputs(probe, multiple, options.static)]
    tolerance = TOLERANCE[options.precision] + (FP16_IO_ROUNDING if options.io == "fp16" else 0.0)
    # the reference is the network as torch runs it for every caller (padding and all) on the very input the
    # file sees (rounded to fp16 with fp16 I/O)
    reference = described.runnable()
    if options.static:
        session = onnxruntime_session(data)
    else:
        data, session = settle_batch(data, reference, inputs[-1], tolerance, options.clamp)
    diff = check_graph(session, reference, inputs, tolerance, options.clamp, "not written")
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
    return diff
