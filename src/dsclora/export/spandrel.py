"""A file spandrel / chaiNNer load: a training-form SPAN whose Conv3XC branches collapse exactly to our weights.

spandrel detects SPAN by its training-form keys (``sk``, ``conv.0/1/2``), which deploy checkpoints lack;
``forms.to_train_form`` builds branches whose collapse reproduces each deploy kernel bit for bit.
"""

from __future__ import annotations

from pathlib import Path

from dsclora.models.forms import to_deploy
from dsclora.models.span import SPAN
from dsclora.weights.checkpoints import load_model, save_model


def export_spandrel(model: SPAN, path: str | Path) -> float:
    """Write the file; return the max abs difference between its re-collapsed weights and ours (0.0: exact)."""
    deployed = to_deploy(model)
    save_model(deployed, path, form="train")
    reloaded, _ = load_model(path)
    collapsed = to_deploy(reloaded).state_dict()
    return max(float((collapsed[k] - v).abs().max()) for k, v in deployed.state_dict().items())
