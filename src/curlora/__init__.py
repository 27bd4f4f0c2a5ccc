"""CURLoRA for causal language models, as a PEFT method.

`import curlora` registers the method with PEFT, so `peft.get_peft_model(model, curlora.CURLoRAConfig(...))`
works like any built-in tuner, and `PeftModel.from_pretrained` loads saved CURLoRA adapters.
"""

from curlora.errors import CurloraError
from curlora.files import package_version
from curlora.methods import lora_config
from curlora.metrics import delta_norm_ratios
from curlora.tuner import (
    CURLORA_PEFT_TYPE,
    CURLoRAConfig,
    CURLoRALayer,
    CURLoRAModel,
    default_target_modules,
)
from curlora.tuner.export import export_lora
from curlora.tuner.saved import adapter_bytes, check_adapter_dir, load_adapter

__version__ = package_version()


def load_model(name_or_path: str = "smollm2-135m", **kwargs):
    """Load a causal LM and its tokenizer: the built-in `smollm2-135m`, a local folder or a hub id."""
    from curlora.models.load import load_model as _load

    return _load(name_or_path, **kwargs)


__all__ = [
    "CURLORA_PEFT_TYPE",
    "CURLoRAConfig",
    "CURLoRALayer",
    "CURLoRAModel",
    "CurloraError",
    "adapter_bytes",
    "check_adapter_dir",
    "load_adapter",
    "default_target_modules",
    "delta_norm_ratios",
    "export_lora",
    "load_model",
    "lora_config",
]
