"""Model definitions: SPAN (with its Conv3XC and SPAB) and the DSCLoRA student (SConvLB blocks)."""

from dsclora.models.conv3xc import Conv3XC
from dsclora.models.dsclora import DSCLoRA, DSCLoRAConfig, SConvLB
from dsclora.models.span import SPAB, SPAN, SpanConfig

__all__ = ["SPAB", "SPAN", "Conv3XC", "DSCLoRA", "DSCLoRAConfig", "SConvLB", "SpanConfig"]
