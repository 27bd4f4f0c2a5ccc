"""Baselines built from PEFT itself, on the same injection targets as CURLoRA."""

from __future__ import annotations

from peft import LoraConfig

from curlora.tuner.config import default_target_modules


def lora_config(
    r: int,
    alpha: float = 1.0,
    target_modules: list[str] | None = None,
    model_type: str | None = None,
    **kwargs,
) -> LoraConfig:
    """PEFT LoRA configured like the original CURLoRA study's LoRA.

    The original computes α·x·A·B with no division by r, A Kaiming-uniform and B zero. PEFT computes
    (lora_alpha / r)·x·Aᵀ·Bᵀ with the same initialisation, so lora_alpha = α·r gives the same update.
    """
    return LoraConfig(
        r=r,
        lora_alpha=alpha * r,
        lora_dropout=0.0,
        bias="none",
        init_lora_weights=True,
        target_modules=target_modules or default_target_modules(model_type),
        fan_in_fan_out=model_type == "gpt2",  # GPT-2's Conv1D stores weights in × out
        **kwargs,
    )
