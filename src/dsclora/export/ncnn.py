"""NCNN (Tencent's mobile inference library, used by Upscayl and chaiNNer's NCNN path) through pnnx.

pnnx traces the deploy-form network with two input sizes (so height and width stay dynamic) and writes
``<stem>.param`` / ``<stem>.bin``. The export is then run in ncnn's own Python binding on a real image and
compared with torch before the files are put in place. Both tools are an optional extra:
``pip install 'dsclora[ncnn]'``.
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from dsclora.errors import DscloraError
from dsclora.export.capture import captured_output
from dsclora.fs import NEARLY_FULL_BYTES, free_bytes, nearly_full, no_space_error
from dsclora.models.descriptor import ModelDescriptor

TOLERANCE = 1e-4  # max abs difference to torch fp32 on a [0, 1] image (measured: ~1e-6)


def ncnn_paths(path: str | Path) -> tuple[Path, Path]:
    """(``.param``, ``.bin``) for an output named ``x.param``, ``x.bin`` or ``x``."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".param", ".bin") else path
    return stem.with_name(stem.name + ".param"), stem.with_name(stem.name + ".bin")


def run_ncnn(param: Path, weights: Path, x: torch.Tensor) -> torch.Tensor:
    """One image (1, C, H, W) through an NCNN model in fp32 (input ``in0``, output ``out0``, as pnnx names them)."""
    import ncnn

    net = ncnn.Net()
    net.opt.use_fp16_storage = net.opt.use_fp16_arithmetic = net.opt.use_fp16_packed = False
    net.opt.use_bf16_storage = False
    if net.load_param(str(param)) or net.load_model(str(weights)):
        raise DscloraError(f"ncnn could not load {param} / {weights}")
    array = np.ascontiguousarray(x[0].detach().float().cpu().numpy())  # ncnn.Mat borrows this memory: keep it
    extractor = net.create_extractor()
    extractor.input("in0", ncnn.Mat(array))
    status, out = extractor.extract("out0")
    if status:
        raise DscloraError(f"ncnn failed to run {param} (status {status})")
    return torch.from_numpy(np.array(out))[None]


def export_ncnn(described: ModelDescriptor, path: str | Path, probe: torch.Tensor) -> tuple[Path, Path, float]:
    """Write ``.param`` and ``.bin`` after checking them in ncnn against torch; returns both paths and the diff.

    The traced sizes are multiples of 8, so a network that pads its input to a multiple (``size_multiple``) is
    traced without the padding: NCNN then needs inputs of that multiple."""
    try:
        import ncnn  # noqa: F401
        import pnnx
    except ImportError:
        raise DscloraError("NCNN export needs pnnx and ncnn: pip install 'dsclora[ncnn]'") from None
    deployed = copy.deepcopy(described.runnable()).float().cpu().eval()
    param, weights = ncnn_paths(path)
    channels = described.in_channels
    param.parent.mkdir(parents=True, exist_ok=True)
    # pnnx writes ~5 copies of the weights (TorchScript, pnnx and ncnn files, ONNX) and aborts the whole process
    # when a write fails, so a disk without room for them is refused before it starts
    free = free_bytes(param.parent)
    if free is not None and free < 6 * sum(p.numel() * 4 for p in deployed.parameters()) + NEARLY_FULL_BYTES:
        raise no_space_error(param.parent, param.name)
    with tempfile.TemporaryDirectory(dir=param.parent) as work:
        stem = Path(work) / "model"
        log = Path(work) / "pnnx.log"
        with captured_output(log):
            pnnx.export(
                deployed,
                str(stem) + ".pt",
                inputs=(torch.rand(1, channels, 48, 64),),
                inputs2=(torch.rand(1, channels, 40, 56),),
                ncnnparam=str(stem) + ".param",
                ncnnbin=str(stem) + ".bin",
                pnnxparam=str(stem) + ".pnnx.param",
                pnnxbin=str(stem) + ".pnnx.bin",
                pnnxpy=str(stem) + "_pnnx.py",
                pnnxonnx=str(stem) + ".pnnx.onnx",
                ncnnpy=str(stem) + "_ncnn.py",
                fp16=False,
            )
        tmp_param, tmp_bin = Path(str(stem) + ".param"), Path(str(stem) + ".bin")
        if not (tmp_param.is_file() and tmp_bin.is_file()):
            if nearly_full(param.parent):  # pnnx, a separate program, only says it could not write
                raise no_space_error(param.parent, param.name)
            last = log.read_text(errors="replace").strip().splitlines()[-1:]
            raise DscloraError(f"pnnx wrote no NCNN files ({last[0] if last else 'no message'})")
        with torch.no_grad():
            want = deployed(probe)
        diff = float((run_ncnn(tmp_param, tmp_bin, probe) - want).abs().max())
        if not diff <= TOLERANCE:
            raise DscloraError(f"ncnn output differs from torch by {diff:.2e} (> {TOLERANCE:.0e}); not written")
        os.replace(tmp_bin, weights)
        os.replace(tmp_param, param)
    return param, weights, diff
