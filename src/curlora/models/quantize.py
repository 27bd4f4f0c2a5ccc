"""Loading a model with a bitsandbytes-quantized base (`load_model(..., quantize="4bit" | "8bit")`).

4bit is QLoRA's setting: nf4 with double quantization, computing in the model's dtype (bf16 on a GPU). 8bit is
LLM.int8(). Quantizing re-rounds *float* weights: the built-in SmolLM2 is stored dequantized from its GGUF file
(float32 once loaded), so it may be quantized again; a checkpoint that is already quantized (GPTQ, AWQ,
bitsandbytes, ...) is refused, since re-quantizing its dequantized weights would compound two roundings silently.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

import torch

from curlora.errors import CurloraError

QUANTIZE_CHOICES = ("4bit", "8bit")


def check_quantize(quantize: str | None) -> str | None:
    """The normalised choice (None, '4bit' or '8bit'); a clear error for anything else (e.g. '3bit')."""
    if quantize is None or str(quantize).strip().lower() in ("", "none", "no"):
        return None
    key = str(quantize).strip().lower()
    if key not in QUANTIZE_CHOICES:
        raise CurloraError(
            f"--quantize {quantize!r} is not supported; choose {' or '.join(QUANTIZE_CHOICES)} "
            "(bitsandbytes nf4 or LLM.int8()), or leave it out for a float base"
        )
    return key


def bitsandbytes_version() -> str:
    """The installed bitsandbytes version; a clear error naming the fix when it is missing."""
    try:
        import bitsandbytes  # noqa: F401 (the import itself is the check: its native library loads here)
    except ImportError:
        raise CurloraError(
            "--quantize needs bitsandbytes, which is not installed; pip install 'curlora[quant]' "
            "(or pip install bitsandbytes)"
        ) from None
    return importlib.metadata.version("bitsandbytes")


def check_device(quantize: str, device: torch.device) -> None:
    """Quantize and run one small layer on `device`: a clear error naming the device if bitsandbytes cannot."""
    import bitsandbytes as bnb

    version = bitsandbytes_version()
    try:
        with torch.no_grad():
            weight = torch.randn(64, 64)
            if quantize == "4bit":
                layer = bnb.nn.Linear4bit(64, 64, bias=False, quant_type="nf4", compute_dtype=torch.float32)
                layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
            else:
                layer = bnb.nn.Linear8bitLt(64, 64, bias=False, has_fp16_weights=False)
                layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
            layer.to(device)(torch.randn(2, 64, device=device))
    except (RuntimeError, NotImplementedError, AttributeError, ValueError) as exc:
        raise CurloraError(
            f"bitsandbytes {version} cannot run {quantize} layers on device {device} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); use --device cuda (or cpu with bitsandbytes >= "
            "0.49), or leave out --quantize"
        ) from exc


def check_not_quantized(model_config: Any, name: str) -> None:
    """Refuse a checkpoint that is already quantized (its config carries a quantization_config)."""
    existing = getattr(model_config, "quantization_config", None)
    if existing:
        method = existing.get("quant_method") if isinstance(existing, dict) else getattr(existing, "quant_method", "?")
        raise CurloraError(
            f"model {name!r} is already quantized ({getattr(method, 'value', method)}); --quantize re-quantizes "
            "float weights only: load it without --quantize, or give its float (bf16/fp32) checkpoint"
        )


def bitsandbytes_config(quantize: str, compute_dtype: torch.dtype):
    """The `transformers.BitsAndBytesConfig` for '4bit' (QLoRA: nf4, double quantization) or '8bit'."""
    from transformers import BitsAndBytesConfig

    if quantize == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    return BitsAndBytesConfig(load_in_8bit=True)
