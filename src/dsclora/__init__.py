"""dsclora: distillation-supervised ConvLoRA for efficient image super-resolution.

Train ConvLoRA adapters on a pre-trained SPAN under spatial-affinity distillation, merge them, and get back a
plain SPAN of the same cost (Chai et al., arXiv 2504.11271).
"""

from dsclora.errors import DscloraError
from dsclora.lora import LoRAConv2d, LoraSpec, inject_lora
from dsclora.models import SPAN, DSCLoRA, DSCLoRAConfig, SConvLB, SpanConfig
from dsclora.reparam import to_deploy

__version__ = "0.1.0"

__all__ = [
    "SPAN",
    "DSCLoRA",
    "DSCLoRAConfig",
    "DscloraError",
    "LoRAConv2d",
    "LoraSpec",
    "SConvLB",
    "SpanConfig",
    "inject_lora",
    "to_deploy",
]
