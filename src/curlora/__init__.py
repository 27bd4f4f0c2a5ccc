"""CURLoRA for causal language models, as a PEFT method.

`import curlora` registers the method with PEFT, so `peft.get_peft_model(model, curlora.CURLoRAConfig(...))`
works like any built-in tuner, and `PeftModel.from_pretrained` loads saved CURLoRA adapters.
"""

from curlora.adapters import adapter_bytes, check_adapter_dir, load_adapter
from curlora.baselines import lora_config
from curlora.errors import CurloraError
from curlora.tuner import (
    CURLORA_PEFT_TYPE,
    CURLoRAConfig,
    CURLoRALayer,
    CURLoRAModel,
    default_target_modules,
    delta_norm_ratios,
)
from curlora.tuner.export import export_lora

__version__ = "0.1.0"


def load_model(name_or_path: str = "smollm2-135m", **kwargs):
    """Load a causal LM and its tokenizer: the built-in `smollm2-135m`, a local folder or a hub id."""
    from curlora.models import load_model as _load

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
