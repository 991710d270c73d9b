"""dsclora: distillation-supervised ConvLoRA for efficient image super-resolution, for SPAN and any SR network.

Train ConvLoRA adapters on a pre-trained network under the supervision of a frozen, better teacher, merge them,
and get back the same network at the same cost (Chai et al., arXiv 2504.11271). The package follows the flow of
the work: ``data`` (HR -> LR, patches) -> ``models`` (adapters, the model descriptor, SPAN) -> ``weights``
(loading any network, checkpoints) -> ``export`` / ``measure`` -> ``train`` -> ``runtime`` (deploy).
"""

from dsclora.errors import DscloraError
from dsclora.models.adapters import AdapterSpec, LoRAConv2d, LoRALinear, inject, merge
from dsclora.models.descriptor import ModelDescriptor
from dsclora.models.span import SPAN, SpanConfig
from dsclora.version import __version__
from dsclora.weights.load import load

__all__ = [
    "SPAN",
    "AdapterSpec",
    "DscloraError",
    "LoRAConv2d",
    "LoRALinear",
    "ModelDescriptor",
    "SpanConfig",
    "__version__",
    "inject",
    "load",
    "merge",
]
