"""Make PEFT know CURLoRA: extend its closed PeftType enum and register config, tuner and key prefix."""

from __future__ import annotations

from peft.utils.peft_types import PeftType

from curlora.tuner.enum_ext import extend_str_enum

CURLORA_PEFT_TYPE = extend_str_enum(PeftType, "CURLORA")


def register() -> None:
    """Idempotent: importing curlora twice (or reloading it) must not fail."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils.peft_types import register_peft_method

    from curlora.tuner.config import CURLoRAConfig
    from curlora.tuner.model import CURLoRAModel

    if CURLORA_PEFT_TYPE in PEFT_TYPE_TO_TUNER_MAPPING:
        return
    register_peft_method(name="curlora", config_cls=CURLoRAConfig, model_cls=CURLoRAModel, prefix="curlora_")
