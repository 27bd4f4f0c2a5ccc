"""CURLoRA as a PEFT tuner: config, layer, model; importing this package registers the method with PEFT."""

from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils.peft_types import register_peft_method

from curlora.tuner.config import CURLORA_PEFT_TYPE, DEFAULT_TARGET_MODULES, CURLoRAConfig, default_target_modules
from curlora.tuner.layer import CURLoRALayer, CURLoRALinear
from curlora.tuner.model import CURLoRAModel

# idempotent: importing twice (or reloading) must not register twice
if CURLORA_PEFT_TYPE not in PEFT_TYPE_TO_TUNER_MAPPING:
    register_peft_method(name="curlora", config_cls=CURLoRAConfig, model_cls=CURLoRAModel, prefix="curlora_")

__all__ = [
    "CURLORA_PEFT_TYPE",
    "CURLoRAConfig",
    "CURLoRALayer",
    "CURLoRALinear",
    "CURLoRAModel",
    "DEFAULT_TARGET_MODULES",
    "default_target_modules",
]
