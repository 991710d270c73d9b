"""Networks: SPAN (Conv3XC, SPAB), ConvLoRA, the DSCLoRA student, their exact forms, self-ensemble, bicubic."""

from dsclora.models.conv3xc import Conv3XC
from dsclora.models.dsclora import DSCLoRA, DSCLoRAConfig
from dsclora.models.span import SPAB, SPAN, SpanConfig

__all__ = ["SPAB", "SPAN", "Conv3XC", "DSCLoRA", "DSCLoRAConfig", "SpanConfig"]
