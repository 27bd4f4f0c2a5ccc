"""CURLoRA as a PEFT tuner: config, layer, model and the registration that makes PEFT know it."""

from curlora.tuner.config import DEFAULT_TARGET_MODULES, CURLoRAConfig, default_target_modules
from curlora.tuner.layer import CURLoRALayer, CURLoRALinear
from curlora.tuner.model import CURLoRAModel, delta_norm_ratios
from curlora.tuner.registration import CURLORA_PEFT_TYPE, register

register()

__all__ = [
    "CURLORA_PEFT_TYPE",
    "CURLoRAConfig",
    "CURLoRALayer",
    "CURLoRALinear",
    "CURLoRAModel",
    "DEFAULT_TARGET_MODULES",
    "default_target_modules",
    "delta_norm_ratios",
]
