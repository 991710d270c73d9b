"""The DSCLoRA student (Chai et al., arXiv 2504.11271): a deploy-form SPAN with ConvLoRA in 20 convs.

Placement (``docs/method.md``, confirmed by diffing the released weights against SPAN-tiny): the three convs
of every block (a SPAB whose convs carry ConvLoRA is the paper's *SConvLB*), ``conv_2`` (the conv before the
pixel-shuffle block) and the upsampler's 3x3 conv. ``conv_1``, ``conv_cat`` and all biases stay frozen.
Default ranks are the authors' code comments: r=2, α=4 in blocks; r=8, α=16 for conv_2 and the upsampler.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from dsclora.models.forms import to_deploy
from dsclora.models.lora import LoraSpec, inject_lora
from dsclora.models.span import SPAN, SpanConfig


@dataclass(frozen=True)
class DSCLoRAConfig:
    """Rank, α and input dropout of the ConvLoRA updates: block convs (SConvLB) and the two tail convs."""

    block_rank: int = field(default=2, metadata={"help": "rank of ΔW in each block conv (authors' code: 2)"})
    block_alpha: float = field(default=4.0, metadata={"help": "α of the block convs; ΔW is scaled by α / rank"})
    tail_rank: int = field(default=8, metadata={"help": "rank of ΔW in conv_2 and the upsampler conv (8)"})
    tail_alpha: float = field(default=16.0, metadata={"help": "α of conv_2 and the upsampler conv"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the low-rank path's input (0 = one conv)"})

    def rules(self) -> list[tuple[str, LoraSpec]]:
        """The paper's placement as ``inject_lora`` patterns: the one definition of where ConvLoRA goes."""
        block = LoraSpec(self.block_rank, self.block_alpha, self.dropout)
        tail = LoraSpec(self.tail_rank, self.tail_alpha, self.dropout)
        return [("block_*.c?_r.eval_conv", block), ("conv_2.eval_conv", tail), ("upsampler.0", tail)]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DSCLoRAConfig:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


class DSCLoRA(SPAN):
    """SPAN (deploy form) whose blocks are SConvLBs, with ConvLoRA on conv_2 and the upsampler conv too.

    Built empty from configs, or from a trained SPAN with :meth:`from_span` (the usual start: the student
    equals its teacher because every ``lora_B`` starts at zero). ``forms.to_deploy`` merges it to a plain SPAN.
    """

    def __init__(self, config: SpanConfig | None = None, lora: DSCLoRAConfig | None = None) -> None:
        super().__init__(config, deploy=True)
        self.lora_config = lora or DSCLoRAConfig()
        inject_lora(self, self.lora_config.rules())

    @classmethod
    def from_span(cls, base: SPAN, lora: DSCLoRAConfig | None = None) -> DSCLoRA:
        """A student whose base weights are ``base``'s (collapsed first if it is in training form)."""
        deployed = to_deploy(base)
        student = cls(deployed.config, lora).to(next(deployed.parameters()).device)
        missing, unexpected = student.load_state_dict(deployed.state_dict(), strict=False)
        assert not unexpected and all(k.endswith(("lora_A", "lora_B")) for k in missing)
        return student
