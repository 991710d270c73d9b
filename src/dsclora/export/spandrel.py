"""A file spandrel / chaiNNer load: the training form of an architecture spandrel detects only that way (SPAN,
whose Conv3XC branches ``sk``, ``conv.0/1/2`` spandrel reads and deploy checkpoints lack), written so that its
collapse reproduces our weights bit for bit (``models/span/forms.py``)."""

from __future__ import annotations

from pathlib import Path

from dsclora.errors import DscloraError
from dsclora.models.descriptor import ModelDescriptor
from dsclora.weights.load import load


def export_spandrel(described: ModelDescriptor, path: str | Path) -> float:
    """Write the file; return the max abs difference between its re-collapsed weights and ours (0.0: exact)."""
    if described.hooks.train_form is None or described.saver is None:
        raise DscloraError(
            f"--format spandrel writes SPAN's training form; {described.arch} has none (spandrel reads its own "
            "files as they are: use --format safetensors, or the original file)"
        )
    described.saver(described.module, Path(path), train_form=True)
    collapsed = load(str(path)).module.state_dict()
    ours = described.module.state_dict()
    return max(float((collapsed[k].cpu() - v.cpu()).abs().max()) for k, v in ours.items())
