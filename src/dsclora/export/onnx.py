"""ONNX: the one graph builder (used by ``dsclora export`` and by the ONNX Runtime back-end) and checked files.

The graph is the merged network as a descriptor runs it (input range and padding inside, so the file takes and
gives RGB in [0, 1]) with dynamic batch / height / width, or one fixed input size
(``static``), which TensorRT and some mobile runtimes prefer. ``fp16`` stores weights and computes in half
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
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from dsclora.errors import DscloraError
from dsclora.fs import atomic_write
from dsclora.models.descriptor import ModelDescriptor

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


def onnx_bytes(
    model: nn.Module, options: OnnxOptions = OnnxOptions(), metadata: dict[str, str] | None = None, in_channels: int = 3
) -> bytes:
    """The serialised ONNX graph of ``model`` (any module mapping NCHW [0, 1] images to NCHW [0, 1] images)."""
    try:
        import onnx
    except ImportError:
        raise DscloraError("ONNX needs the onnx package: pip install 'dsclora[onnx]'") from None
    graph = _Graph(copy.deepcopy(model).cpu().eval(), options)
    h, w = options.static or (32, 32)
    sample = torch.rand(1, in_channels, h, w).to(graph.io)
    dynamic = None if options.static else {0: "batch", 2: "height", 3: "width"}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its own deprecation
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
    """Write an ONNX file atomically after checking it in ONNX Runtime against torch fp32 on ``probe``.

    Returns the max abs difference (outputs clamped alike); raises, writing nothing, above ``TOLERANCE``.
    """
    check_options(options)
    model = described.runnable()
    data = onnx_bytes(model, options, metadata, described.in_channels)
    session = onnxruntime_session(data)
    x = probe
    if options.static:
        h, w = options.static
        if probe.shape[2] < h or probe.shape[3] < w:
            raise DscloraError(f"the check image is smaller than the static input size {h}x{w}")
        x = probe[:, :, :h, :w]
    feed = x.numpy().astype(np.float16 if options.io == "fp16" else np.float32)
    got = session.run(None, {"input": feed})[0].astype(np.float32)
    with torch.no_grad():  # the reference sees the input the file sees (rounded to fp16 with fp16 I/O)
        want = copy.deepcopy(model).float().eval()(torch.from_numpy(feed.astype(np.float32)))
    want = (want.clamp(0, 1) if options.clamp else want).numpy()
    diff = float(np.abs(got - want).max())
    tolerance = TOLERANCE[options.precision] + (FP16_IO_ROUNDING if options.io == "fp16" else 0.0)
    if not diff <= tolerance:
        raise DscloraError(f"ONNX Runtime output differs from torch by {diff:.2e} (> {tolerance:.0e}); not written")
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
    return diff
