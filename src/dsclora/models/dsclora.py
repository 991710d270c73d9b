"""The DSCLoRA student (Chai et al., arXiv 2504.11271): a deploy-form SPAN with ConvLoRA in 20 convs.

Placement (``paper-notes.md`` §2, confirmed by diffing the released weights against SPAN-tiny): the three
convs of every block (a SPAB with ConvLoRA convs is the paper's *SConvLB*), ``conv_2`` (the conv before the
pixel-shuffle block) and the upsampler's 3x3 conv. ``conv_1``, ``conv_cat`` and all biases stay frozen.
Default ranks are the authors' code comments: r=2, α=4 in blocks; r=8, α=16 for conv_2 and the upsampler.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from dsclora.lora import LoraSpec, inject_lora
from dsclora.models.span import SPAB, SPAN, SpanConfig

BLOCK_CONVS = ("c1_r", "c2_r", "c3_r")


@dataclass(frozen=True)
class DSCLoRAConfig:
    """Rank / alpha / dropout of the block convs and of the two tail convs (conv_2, upsampler)."""

    block_rank: int = 2
    block_alpha: float = 4.0
    tail_rank: int = 8
    tail_alpha: float = 16.0
    dropout: float = 0.0

    @property
    def block_spec(self) -> LoraSpec:
        return LoraSpec(self.block_rank, self.block_alpha, self.dropout)

    @property
    def tail_spec(self) -> LoraSpec:
        return LoraSpec(self.tail_rank, self.tail_alpha, self.dropout)

    def rules(self) -> list[tuple[str, LoraSpec]]:
        """The paper's placement as ``inject_lora`` patterns (usable on any deploy-form SPAN)."""
        return [
            ("block_*.c?_r.eval_conv", self.block_spec),
            ("conv_2.eval_conv", self.tail_spec),
            ("upsampler.0", self.tail_spec),
        ]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DSCLoRAConfig:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


class SConvLB(SPAB):
    """SPAB in deploy form whose three convs carry ConvLoRA (the paper's SConvLB); forward as SPAB."""

    def __init__(self, channels: int, spec: LoraSpec) -> None:
        super().__init__(channels, deploy=True)
        inject_lora(self, [(f"{name}.eval_conv", spec) for name in BLOCK_CONVS])


class DSCLoRA(SPAN):
    """SPAN (deploy form) with SConvLB blocks and ConvLoRA on conv_2 and the upsampler conv.

    Built empty from configs, or from a trained SPAN with :meth:`from_span` (the usual start: the student
    equals its teacher because every ``lora_B`` starts at zero). ``to_deploy`` merges it to a plain SPAN.
    """

    def __init__(self, config: SpanConfig | None = None, lora: DSCLoRAConfig | None = None) -> None:
        super().__init__(config, deploy=True)
        self.lora_config = lora = lora or DSCLoRAConfig()
        for i in range(1, self.config.blocks + 1):
            setattr(self, f"block_{i}", SConvLB(self.config.channels, lora.block_spec))
        inject_lora(self, [("conv_2.eval_conv", lora.tail_spec), ("upsampler.0", lora.tail_spec)])

    @classmethod
    def from_span(cls, base: SPAN, lora: DSCLoRAConfig | None = None) -> DSCLoRA:
        """A student whose base weights are ``base``'s (collapsed first if it is in training form)."""
        from dsclora.reparam import to_deploy

        deployed = to_deploy(base)
        student = cls(deployed.config, lora).to(next(deployed.parameters()).device)
        missing, unexpected = student.load_state_dict(deployed.state_dict(), strict=False)
        assert not unexpected and all(k.endswith(("lora_A", "lora_B")) for k in missing)
        return student
