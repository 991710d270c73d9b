"""Inference back-ends and precisions agree with the eager fp32 reference on real images (the embedded model on
photos from scikit-image's wheel: no workspace data needed)."""

from __future__ import annotations

import copy
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dsclora.data.benchmark import find_pairs, load_pair
from dsclora.data.images import to_array, to_tensor, to_uint8
from dsclora.errors import DscloraError
from dsclora.measure.metrics import psnr_y
from dsclora.models.descriptor import ModelDescriptor
from dsclora.models.rounding import bf16_keeping_sums
from dsclora.models.span import BF16SPAN, FusedSPAN, fused_bf16
from dsclora.models.span.fused import pixel_shuffle_to_nchw
from dsclora.models.span.padding import pad_channels
from dsclora.runtime.autotune import resolve
from dsclora.runtime.backends import generic_bf16_policy, make_runner
from dsclora.runtime.reference import MAX_ABS_CHANGE, accuracy, reference_pairs
from dsclora.runtime.tiling import TiledUpscaler
from dsclora.weights.load import load
from dsclora.weights.registry import embedded_weights
from support import benchmark_set, lr_photos


@pytest.fixture(scope="module")
def dscf():
    """The embedded model: a trained SPAN-tiny (C = 26, 6 blocks, x4), like the DSCLoRA release."""
    return load(str(embedded_weights()))


def lr_image(index: int = 0) -> torch.Tensor:
    return lr_photos(3, 64, 80)[index]


@pytest.mark.parametrize("backend", ["torch", "channels_last", "onnxruntime", "compile", "auto"])
def test_exact_backends_match_reference(dscf, backend: str) -> None:
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    x = lr_image()[:, :, :72, :80]
    with torch.no_grad():
        reference = dscf.module(x)
    cpu = torch.device("cpu")
    choice = resolve(dscf, backend, cpu)
    assert choice.backend != "auto"
    runner = make_runner(dscf, choice.backend, cpu, pad=choice.pad)
    assert (runner(x) - reference).abs().max().item() <= 1e-4
    tiled = TiledUpscaler(runner, 4, tile=32, overlap=dscf.receptive_radius)(x)
    assert (tiled - reference).abs().max().item() <= 1e-4


@pytest.mark.parametrize(
    ("backend", "precision", "budget_db"),
    [
        ("channels_last", "bf16", 0.05),
        ("channels_last", "bf16-accurate", 0.005),  # SPAN's own bf16 form (BF16SPAN)
        ("torch", "bf16-accurate", 0.005),  # the generic policy, on the unfused SPAN
        ("compile", "bf16-accurate", 0.005),
    ],
)
def test_reduced_precision_psnr_change_on_set5(dscf, backend: str, precision: str, budget_db: float) -> None:
    """The bound is a claim about real photos of full size: Set5 (on five 32x32 crops one image moves 0.03 dB)."""
    runner = make_runner(dscf, backend, torch.device("cpu"), precision)
    ref_runner = make_runner(dscf, "torch", torch.device("cpu"))
    changes = []
    for pair in find_pairs(benchmark_set("Set5"), 4):
        hr, lr = load_pair(pair, 4)
        x = to_tensor(lr)
        sr = to_uint8(to_array(runner(x)))
        ref = to_uint8(to_array(ref_runner(x)))
        changes.append(psnr_y(sr, hr, 4) - psnr_y(ref, hr, 4))
    assert abs(np.mean(changes)) <= budget_db
    assert not np.array_equal(sr, ref)  # the precision really changed the arithmetic


def test_bad_backend_choices(dscf) -> None:
    with pytest.raises(DscloraError, match="fp16 needs a GPU"):
        make_runner(dscf, "torch", torch.device("cpu"), "fp16")
    with pytest.raises(DscloraError, match="unknown backend"):
        make_runner(dscf, "tensorrt", torch.device("cpu"))


@pytest.mark.parametrize("multiple", [8, 16, 32])
def test_channel_padding_is_exact_on_real_images(dscf, multiple: int) -> None:
    padded = pad_channels(dscf.module, multiple)
    assert padded.config.channels == 32 and padded.conv_cat.weight.shape == (32, 128, 1, 1)
    for index in range(3):
        x = lr_image(index)
        with torch.no_grad():
            assert (padded(x) - dscf.module(x)).abs().max().item() <= 1e-6
    runner = make_runner(dscf, "channels_last", torch.device("cpu"), pad=multiple)  # the back-end path too
    x = lr_image()[:, :, :40, :52]
    with torch.no_grad():
        assert (runner(x) - dscf.module(x)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("band_rows", [None, 7])
def test_bf16span_is_fusedspan_when_computed_in_fp32(dscf, monkeypatch, band_rows: int | None) -> None:
    """BF16SPAN's rewrite (bias of c3 after the conv, fp32 residual stream and joined sum, one-copy pixel
    shuffle, element-wise passes over row bands) is exact: with fp32 in place of bf16 it equals FusedSPAN on
    real images, in one band and in bands of 7 rows (64 = 9 * 7 + 1: a last band of one row)."""
    if band_rows:
        monkeypatch.setattr(fused_bf16, "_BAND", 26 * 80 * band_rows)
    fused = FusedSPAN.from_span(dscf.module)
    work = BF16SPAN(fused, low=torch.float32).eval()
    for index in range(3):
        x = lr_image(index)
        with torch.no_grad():
            assert (work(x) - fused(x)).abs().max().item() <= 1e-5


def test_bf16span_row_bands_compute_what_whole_tensors_do(dscf, monkeypatch) -> None:
    """In bf16 too: the banded passes give bit for bit the output of one whole-tensor band."""
    work = BF16SPAN.from_fused(FusedSPAN.from_span(dscf.module))
    x = lr_image(1)
    with torch.no_grad():
        monkeypatch.setattr(fused_bf16, "_BAND", 10**9)
        whole = work(x)
        monkeypatch.setattr(fused_bf16, "_BAND", 26 * 80 * 7)
        assert torch.equal(work(x), whole)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_pixel_shuffle_to_nchw_equals_pixel_shuffle(scale: int, dtype: torch.dtype) -> None:
    """Bit for bit, NaN payloads included (x4 fp32, x2 fp32 and x4 bf16 move 16- or 8-byte segments)."""
    y = torch.randn(2, 3 * scale * scale, 7, 5).to(dtype)
    y.view(torch.int16 if dtype == torch.bfloat16 else torch.int32)[0, 1, 2, 3] = -1  # a NaN with all payload bits
    want = torch.nn.functional.pixel_shuffle(y, scale)
    for layout in (torch.contiguous_format, torch.channels_last):
        got = pixel_shuffle_to_nchw(y.contiguous(memory_format=layout), scale)
        assert got.is_contiguous() and got.dtype == dtype
        assert torch.equal(got.view(torch.uint8), want.contiguous().view(torch.uint8))


def test_rounding_keeps_kernel_sums() -> None:
    """Nine taps of 1 + 0.4 ulp (bf16's ulp at 1 is 2^-7) all round to 1 to the nearest: the kernel's sum falls
    3.6 ulp short. Keeping the sum rounds exactly four taps up instead (sum error 0.4 ulp), and every tap
    stays one of its two bf16 neighbours."""
    ulp = 2.0**-7
    weight = torch.full((1, 1, 3, 3), 1 + 0.4 * ulp)
    assert torch.equal(weight.to(torch.bfloat16).float(), torch.ones_like(weight))
    kept = bf16_keeping_sums(weight)
    assert torch.equal(kept.to(torch.bfloat16).float(), kept)  # exact bf16 values
    assert int((kept == 1 + ulp).sum()) == 4 and int((kept == 1).sum()) == 5
    assert abs((kept - weight).sum().item()) == pytest.approx(0.4 * ulp, rel=1e-3)
    # on a real network: each kernel's sum no further from fp32 than nearest rounding leaves it
    conv = FusedSPAN.from_span(load(None).module).blocks[0].c1_r.eval_conv.weight.detach()
    kept, nearest = bf16_keeping_sums(conv), conv.to(torch.bfloat16).float()
    assert ((kept - conv).abs() <= 2.0**-7 * conv.abs()).all()  # within one bf16 ulp of each weight
    sums = (kept - conv).sum((2, 3)).abs(), (nearest - conv).sum((2, 3)).abs()
    assert sums[0].mean() < sums[1].mean() / 4


def test_generic_bf16_accurate_keeps_the_first_and_last_conv_in_fp32() -> None:
    """Any network without an architecture policy: first and last conv (module order) fp32, the others bf16
    with exact-bf16 weights, every conv handing fp32 on."""
    net = torch.nn.Sequential(
        *(torch.nn.Conv2d(3 if i == 0 else 8, 3 if i == 3 else 8, 3, padding=1) for i in range(4))
    )
    work = generic_bf16_policy(copy.deepcopy(net), "bf16-accurate")
    kinds = [type(module).__name__ for module in work]
    assert kinds == ["_Float32", "_Float32Output", "_Float32Output", "_Float32"]
    assert torch.equal(work[0].conv.weight, net[0].weight) and torch.equal(work[3].conv.weight, net[3].weight)
    inner = work[1].conv.weight
    assert torch.equal(inner.to(torch.bfloat16).float(), inner) and not torch.equal(inner, net[1].weight)
    x = torch.rand(1, 3, 16, 16)
    with torch.autocast("cpu", torch.bfloat16), torch.no_grad():
        out = work(x)
    assert out.dtype == torch.float32 and (out - net(x)).abs().max().item() < 0.05


class _Depthwise(torch.nn.Module):
    """x2 toy: conv, depthwise 1x31 conv, 1x1 conv, conv, pixel shuffle."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Conv2d(3, 12, 3, padding=1)
        self.middle = torch.nn.Conv2d(12, 12, (1, 31), padding=(0, 15), groups=12)
        self.body = torch.nn.Conv2d(12, 12, 1)
        self.tail = torch.nn.Conv2d(12, 12, 3, padding=1)  # registered last: bf16-accurate's fp32 output side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.tail(self.body(self.middle(self.head(x)))), 2)


@pytest.mark.parametrize("precision", ["bf16", "bf16-accurate"])
def test_generic_bf16_policies_keep_grouped_convs_in_fp32_on_cpu(precision: str) -> None:
    """oneDNN's bf16 kernel for some depthwise convs stalls on a CPU (the module docstring): both generic bf16
    policies run every grouped conv in fp32 there, and only those (plus bf16-accurate's first and last)."""
    toy = ModelDescriptor(_Depthwise().eval(), "toy", 2, "toy", {}, "toy")
    made: dict[str, torch.dtype] = {}
    for name in ("middle", "body"):
        toy.module.get_submodule(name).register_forward_hook(
            lambda module, inputs, out, name=name: made.__setitem__(name, out.dtype)
        )
    runner = make_runner(toy, "channels_last", torch.device("cpu"), precision)  # copies keep the hooks
    out = runner(torch.rand(1, 3, 16, 16))  # small: in bf16 this conv stalls at 32x32
    assert made == {"middle": torch.float32, "body": torch.bfloat16} and out.shape == (1, 3, 32, 32)


def test_reference_check_tells_bf16_from_bf16_accurate() -> None:
    """On the shipped reference images, the shipped network's bf16-accurate path stays within the bound of fp32
    and plain bf16 does not; fp32 against itself changes nothing."""
    shipped, cpu = load(None), torch.device("cpu")
    pairs = reference_pairs(shipped.scale)
    assert len(pairs) == 4 and all(hr.shape == (192, 192, 3) and lr.shape == (1, 3, 48, 48) for hr, lr in pairs)
    fp32 = make_runner(shipped, "torch", cpu)
    assert accuracy(fp32, fp32, shipped.scale, cpu).db_change == 0.0
    accurate = accuracy(make_runner(shipped, "channels_last", cpu, "bf16-accurate"), fp32, shipped.scale, cpu)
    plain = accuracy(make_runner(shipped, "channels_last", cpu, "bf16"), fp32, shipped.scale, cpu)
    assert accurate.ok and not plain.ok
    assert plain.max_abs > accurate.max_abs and accurate.max_abs < MAX_ABS_CHANGE


# ------------------------------------------------------------------------------------------- freed feature maps

_KEPT_AFTER_FREE = """
import os, sys, torch
from dsclora.devices import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
def resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
torch.ones(1 << 18).sum()  # the allocator's and thread pool's own first allocations, before counting
before = resident()
block = torch.ones(30 << 18)  # 30 MiB, every page touched: a feature map's worth
del block
print(kept, (resident() - before) >> 20)
"""


def _mib_kept_after_free(mode: str, **env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if "MALLOC_" not in k and k != "GLIBC_TUNABLES"}
    run = subprocess.run(
        [sys.executable, "-c", _KEPT_AFTER_FREE, mode], env=clean | env, capture_output=True, text=True, check=True
    )
    kept, mib = run.stdout.split()
    return kept, int(mib)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")
def test_keep_freed_memory_keeps_a_freed_feature_map_for_the_next_forward() -> None:
    """glibc by default serves a fresh 30 MiB block with its own mmap and unmaps it when freed, so the next forward
    faults it in again; kept, the block comes from the heap and stays resident after the free. A user's own
    threshold wins."""
    _, returned = _mib_kept_after_free("default")
    kept, mib = _mib_kept_after_free("keep")
    assert kept == "True" and 26 <= mib - returned <= 32, (returned, mib)  # the block, give or take a few pages
    assert _mib_kept_after_free("keep", MALLOC_TRIM_THRESHOLD_="131072")[0] == "False"
    assert _mib_kept_after_free("keep", GLIBC_TUNABLES="glibc.malloc.mmap_threshold=65536")[0] == "False"
