"""Loading and measuring saved adapters, with clear errors for broken files."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from curlora.errors import CurloraError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def check_adapter_dir(path: str | Path) -> dict:
    """Validate a saved adapter folder without unpickling anything; return its config dict."""
    path = Path(path)
    config_file, weights_file = path / ADAPTER_CONFIG, path / ADAPTER_WEIGHTS
    for f in (config_file, weights_file):
        if not f.is_file():
            raise CurloraError(f"{f} is missing; pass a folder written by save_pretrained()")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CurloraError(f"{config_file} is not valid JSON ({err}); re-save the adapter") from None
    if not isinstance(config, dict) or "peft_type" not in config:
        raise CurloraError(f"{config_file} has no peft_type; it is not a PEFT adapter config")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights_file), framework="pt") as f:
            for key in f.keys():  # reading every tensor catches truncation, not only a bad header
                f.get_tensor(key)
    except (SafetensorError, OSError, RuntimeError) as err:
        raise CurloraError(
            f"{weights_file} is truncated or corrupted ({err}); re-save the adapter or copy it again"
        ) from None
    return config


def load_adapter(model: nn.Module, path: str | Path, adapter_name: str = "default", is_trainable: bool = False):
    """`PeftModel.from_pretrained` after checking the files; CURLoRA adapters also check the base model."""
    from peft import PeftModel

    import curlora.tuner  # noqa: F401  (registers CURLoRA with PEFT)

    check_adapter_dir(path)
    return PeftModel.from_pretrained(model, str(path), adapter_name=adapter_name, is_trainable=is_trainable)


def adapter_bytes(path: str | Path) -> int:
    """Size of the saved adapter weights file."""
    return (Path(path) / ADAPTER_WEIGHTS).stat().st_size
