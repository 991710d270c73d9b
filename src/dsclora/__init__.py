"""dsclora: distillation-supervised ConvLoRA for efficient image super-resolution.

Train ConvLoRA adapters on a pre-trained SPAN under the supervision of a frozen teacher, merge them, and get
back a plain SPAN of the same cost (Chai et al., arXiv 2504.11271). The package follows the flow of the work:
``data`` (HR -> LR, patches) -> ``models`` (SPAN, ConvLoRA, student) -> ``train`` (teacher, losses, loop) ->
``weights`` (checkpoints, merge) -> ``runtime`` (deploy) -> ``measure`` (eval) / ``export``.
"""

from dsclora.errors import DscloraError
from dsclora.models import SPAN, DSCLoRA, DSCLoRAConfig, SpanConfig
from dsclora.models.forms import to_deploy
from dsclora.models.lora import LoRAConv2d, LoraSpec, inject_lora
from dsclora.version import __version__

__all__ = [
    "SPAN",
    "DSCLoRA",
    "DSCLoRAConfig",
    "DscloraError",
    "LoRAConv2d",
    "LoraSpec",
    "SpanConfig",
    "__version__",
    "inject_lora",
    "to_deploy",
]
