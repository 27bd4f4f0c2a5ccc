"""CURLoRAConfig: the PEFT config dataclass of the method."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from peft.config import PeftConfig
from peft.utils.peft_types import PeftType

from curlora.cur import SAMPLING_STRATEGIES, check_strategy
from curlora.errors import CurloraError
from curlora.tuner.basis import BASES, check_basis
from curlora.tuner.enum_ext import extend_str_enum

#: PEFT's PeftType is a closed enum: CURLoRA adds its member once, at import.
CURLORA_PEFT_TYPE = extend_str_enum(PeftType, "CURLORA")

#: Attention q/k/v projections per model type (the paper adapts q, k and v).
DEFAULT_TARGET_MODULES: dict[str, list[str]] = {
    "gpt2": ["c_attn"],
    "llama": ["q_proj", "k_proj", "v_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj"],
    "mixtral": ["q_proj", "k_proj", "v_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj"],
    "gemma2": ["q_proj", "k_proj", "v_proj"],
    "phi3": ["qkv_proj"],
    "opt": ["q_proj", "k_proj", "v_proj"],
}
U_DTYPES = ("float32", "bfloat16", "float16", "float64")


def default_target_modules(model_type: str | None) -> list[str]:
    """The q/k/v projections for a model type; Llama-style names for unknown types."""
    return list(DEFAULT_TARGET_MODULES.get(model_type or "", ["q_proj", "k_proj", "v_proj"]))


@dataclass
class CURLoRAConfig(PeftConfig):
    """Configuration of a CURLoRA adapter: W' = W + alpha · C · U · R.

    Args:
        r: rank; C holds r columns of W, R holds r rows, U is r × r (the only trained tensor).
        alpha: scale of the update (the paper uses 1.0). Not divided by r.
        target_modules: module names (or a regex) to adapt; None picks q/k/v for the model type.
        sampling: how columns and rows are chosen: inverted (paper), reference (original code), standard,
            uniform, lowest, highest. See `curlora.cur`.
        replacement: sample with replacement; None uses the strategy's default (only `reference` samples with).
        seed: selection seed; each layer derives its own stream from it and its module name.
        u_dtype: dtype of U (float32 by default, also on bf16/fp16 bases).
        fan_in_fan_out: set automatically for GPT-2's Conv1D (weight stored in × out).
        base_quantization: set automatically to the base layers' quantization (none, nf4, fp4, nf4-dq, fp4-dq,
            int8); an adapter loaded onto a base quantized differently loads with a warning (docs/QUANTIZED.md).
        reuse_base_output: take x·Rᵀ from the base layer's output (R holds rows of W) instead of a GEMM over x;
            the same numbers, less work. Turn off only if you change the base weights in place while the
            adapter is attached (unsupported anyway: loading rebuilds C and R from them).
        basis: what C and R are: "cur" (CURLoRA: the sampled columns and rows of W), or a control with the same
            r² trainable parameters — "random" (Gaussian, the sampled C's and R's norms), "svd-top" /
            "svd-bottom" (W's top / bottom r singular vectors at those norms). See `curlora.tuner.basis`.
    """

    r: int = field(default=8, metadata={"help": "Rank: number of columns of C, rows of R; U is r × r."})
    alpha: float = field(default=1.0, metadata={"help": "Scale of C·U·R (not divided by r)."})
    target_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Modules to adapt; None = the model type's q/k/v projections."}
    )
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules never adapted."})
    sampling: str = field(default="inverted", metadata={"help": f"One of {', '.join(SAMPLING_STRATEGIES)}."})
    replacement: bool | None = field(default=None, metadata={"help": "Sample with replacement (None: default)."})
    seed: int = field(default=1311, metadata={"help": "Seed of the column/row selection."})
    u_dtype: str = field(default="float32", metadata={"help": f"dtype of U: one of {', '.join(U_DTYPES)}."})
    fan_in_fan_out: bool = field(default=False, metadata={"help": "True for Conv1D (set automatically)."})
    reuse_base_output: bool = field(
        default=True, metadata={"help": "Take x·Rᵀ from the base output (R = rows of W) instead of a GEMM over x."}
    )
    basis: str = field(default="cur", metadata={"help": f"C and R: one of {', '.join(BASES)}."})
    base_quantization: str | None = field(
        default=None,
        metadata={
            "help": "How the base was quantized when the adapter was made: none, nf4, fp4 (+'-dq'), int8 "
            "(set automatically; loading onto a base quantized differently warns: docs/QUANTIZED.md)."
        },
    )
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Extra modules trained and saved whole (e.g. a classification head)."}
    )
    layers_to_transform: list[int] | int | None = field(default=None, metadata={"help": "Only these layers."})
    layers_pattern: list[str] | str | None = field(default=None, metadata={"help": "Layer container name."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = CURLORA_PEFT_TYPE
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise CurloraError(f"r must be a positive integer, got {self.r!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float) or not math.isfinite(self.alpha):
            raise CurloraError(f"alpha must be a finite number, got {self.alpha!r}")
        check_strategy(self.sampling)
        check_basis(self.basis)
        if self.u_dtype not in U_DTYPES:
            raise CurloraError(f"unknown u_dtype {self.u_dtype!r}; choose one of: {', '.join(U_DTYPES)}")
        if isinstance(self.target_modules, list | tuple):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list | tuple):
            self.exclude_modules = set(self.exclude_modules)
