"""Exact tiling: window geometry worked by hand, tiled output equal to untiled on a real image; the tensor peak
that sizes tiles, worked by hand."""

from __future__ import annotations

import torch
from torch import nn

from dsclora.measure.profiling import forward_peak_bytes
from dsclora.runtime.tiling import TiledUpscaler, tile_windows
from dsclora.weights.load import load
from support import lr_photos


def real_lr() -> torch.Tensor:
    """A real LR image (a bicubic x1/4 photo crop) of Set5's typical size, 64 x 80."""
    return lr_photos(1, 64, 80)[0]


def test_tiled_equals_untiled_with_the_receptive_radius() -> None:
    loaded = load(None)  # the embedded model: no official weights needed
    x = real_lr()
    whole = TiledUpscaler(loaded.module, 4)(x)
    tiled = TiledUpscaler(loaded.module, 4, tile=24, overlap=loaded.receptive_radius)(x)
    assert loaded.receptive_radius == 21  # 3 per block x 6 blocks + conv_1, conv_2, upsampler
    assert (whole - tiled).abs().max().item() <= 1e-4
    too_little = TiledUpscaler(loaded.module, 4, tile=24, overlap=2)(x)
    assert (whole - too_little).abs().max().item() > 1e-3  # the overlap really matters


def test_bicubic_tiles_exactly_with_its_radius() -> None:
    loaded = load("bicubic", scale=3)
    x = real_lr()[:, :, :50, :61]
    whole = TiledUpscaler(loaded.module, 3)(x)
    tiled = TiledUpscaler(loaded.module, 3, tile=16, overlap=loaded.receptive_radius)(x)
    assert torch.equal(whole, tiled)


def test_tile_windows_keep_one_shape_and_enough_context() -> None:
    # worked by hand: size 10, tile 4, overlap 2 -> windows of 8 starting at 0, 2, 2
    assert tile_windows(10, 4, 2) == [(0, 4, 0), (4, 8, 2), (8, 10, 2)]
    for size in range(1, 60):
        for tile, overlap in ((7, 3), (16, 0), (5, 21)):
            span = min(tile + 2 * overlap, size)
            cores = tile_windows(size, tile, overlap)
            assert [c[0] for c in cores] == list(range(0, size, tile)) and cores[-1][1] == size
            for start, end, window in cores:
                assert window >= 0 and window + span <= size
                assert start - window >= overlap or window == 0
                assert window + span - end >= overlap or window + span == size


def test_forward_shapes_counts_windows() -> None:
    # 100x50 in tiles of 32 with 4 of overlap: 4 x 2 windows of 40x40; 30x30 fits in one tile, runs whole
    tiled = TiledUpscaler(lambda x: x, 1, tile=32, overlap=4)
    assert tiled.forward_shapes([(100, 50), (30, 30), (100, 50)]) == {(40, 40): 16, (30, 30): 1}
    assert TiledUpscaler(lambda x: x, 1, overlap=4).forward_shapes([(100, 50)]) == {(100, 50): 1}


class _Reshaped(nn.Module):
    """conv -> a view -> a permuted view: three tensors, one storage."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).view(1, 5, -1).permute(0, 2, 1)


def test_forward_peak_bytes_counts_what_is_alive_at_once() -> None:
    # worked by hand, fp32, 16x16: c1's 16-channel output and c2's 2-channel one are alive together while c2
    # runs; c1's is freed before c3 runs (2 + 2 channels); the input and the weights never count
    chain = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 2, 1), nn.Conv2d(2, 2, 3, padding=1))
    assert forward_peak_bytes(chain, (1, 3, 16, 16)) == (16 + 2) * 256 * 4
    assert forward_peak_bytes(chain, (2, 3, 16, 16)) == 2 * (16 + 2) * 256 * 4
    assert forward_peak_bytes(_Reshaped(), (1, 3, 8, 8)) == 5 * 64 * 4  # views share their storage
