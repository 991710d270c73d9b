"""Exact tiling: window geometry worked by hand, tiled output equal to untiled on a real image."""

from __future__ import annotations

import torch

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
