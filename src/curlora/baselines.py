"""Baselines built from PEFT itself (LoRA, VeRA), on the same injection targets as CURLoRA."""

from __future__ import annotations

from peft import LoraConfig, VeraConfig

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


def vera_config(
    r: int,
    target_modules: list[str] | None = None,
    model_type: str | None = None,
    seed: int = 0,
    **kwargs,
) -> VeraConfig:
    """PEFT VeRA on CURLoRA's targets: ΔW = Λ_b·B·Λ_d·A with one frozen random pair A (r × in), B (out × r) shared
    by all adapted layers, and per layer only the vectors λ_b (out) and λ_d (r) trained — out + r parameters.

    Layers of different shapes (GQA's k/v are narrower than q) use the top-left slices of one pair sized by the
    largest in and out. λ_b starts at zero, so the model starts as the base. The pair is drawn from `seed` and
    saved with the adapter (PEFT's default), so loading never depends on regenerating it.
    """
    return VeraConfig(
        r=r,
        projection_prng_key=seed,
        save_projection=True,
        vera_dropout=0.0,
        bias="none",
        target_modules=target_modules or default_target_modules(model_type),
        fan_in_fan_out=model_type == "gpt2",
        **kwargs,
    )
