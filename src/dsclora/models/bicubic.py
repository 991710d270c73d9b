"""MATLAB bicubic upscaling as a model, so the classic baseline runs through the same evaluation and tiling."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dsclora.data.images import to_uint8
from dsclora.data.imresize import imresize

BICUBIC_RADIUS = 2  # the cubic kernel reaches 2 input pixels each side: tiles with this much context are exact


class Bicubic(nn.Module):
    """``imresize(x, scale, 'bicubic')`` on each image of a batch, rounded through uint8 as MATLAB does."""

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for img in x.detach().cpu().numpy():
            # Round-trip to uint8 (exact for 8-bit inputs) so each pass rounds as MATLAB does.
            up = imresize(to_uint8(img.transpose(1, 2, 0)), float(self.scale)).astype(np.float32) / 255.0
            out.append(torch.from_numpy(up.transpose(2, 0, 1).copy()))
        return torch.stack(out).to(x.device)
