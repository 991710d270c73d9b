"""The receptive radius of a network nobody told us about, measured from the gradient of one output pixel.

Exact tiling needs an overlap at least as large as the number of LR pixels on each side that can reach an output
pixel. SPAN's is known by construction (``3·blocks + 3``); for any other network it is measured: the gradient of
one output pixel near the centre of a probe image with respect to the input is non-zero exactly where the input
can change that pixel (up to gradients that vanish by chance, which is why two probes are taken). If the
non-zero gradient reaches the probe's border the network sees further than the probe (global pooling, channel
attention over the whole image, resampling to the image size): the radius is then reported as unbounded
(``None``) and tiling with any overlap is approximate.
"""

from __future__ import annotations

import torch
from torch import nn

PROBE = 96  # LR pixels per side of the probe; radii up to PROBE // 2 - 1 can be measured


def measure_receptive_radius(model: nn.Module, in_channels: int = 3, probe: int = PROBE) -> int | None:
    """LR pixels each side of an input pixel that influence the output pixel above it, or None if unbounded.

    ``model`` maps [0, 1] images to [0, 1] images of any size (a descriptor's ``runnable()``); its parameters are
    not changed and need no gradient.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    centre = probe // 2
    radius = 0
    generator = torch.Generator().manual_seed(0)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():  # callers may be inside no_grad / inference code
            for _ in range(2):
                x = torch.rand(1, in_channels, probe, probe, generator=generator).to(device, dtype).requires_grad_()
                out = model(x)
                scale = out.shape[-1] // probe
                out[..., centre * scale, centre * scale].sum().backward()
                reached = (x.grad != 0).any(dim=1)[0]  # NaN (a gradient through a global statistic) counts
                rows, cols = torch.nonzero(reached, as_tuple=True)
                if rows.numel() == 0:  # no input reaches the output: nothing can be said
                    return None
                if rows.min() == 0 or cols.min() == 0 or rows.max() == probe - 1 or cols.max() == probe - 1:
                    return None
                extent = [centre - rows.min(), rows.max() - centre, centre - cols.min(), cols.max() - centre]
                radius = max(radius, int(max(extent)))
    finally:
        model.train(was_training)
    return radius
