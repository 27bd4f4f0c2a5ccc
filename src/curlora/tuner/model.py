"""CURLoRAModel: PEFT's BaseTuner that swaps target modules for CURLoRA layers."""

from __future__ import annotations

import contextlib
import warnings

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn
from transformers.pytorch_utils import Conv1D

from curlora.errors import CurloraError
from curlora.tuner.config import DEFAULT_TARGET_MODULES, CURLoRAConfig
from curlora.tuner.group import link_shared_input_groups
from curlora.tuner.layer import CURLoRALayer, CURLoRALinear
from curlora.tuner.mixed import adapter_names_hooks

#: fingerprint tolerance when an adapter made on one quantization of a base is loaded onto another (the usual check
#: is 2 %): on SmolLM2-135M, C's absolute sum moves by up to 5 % (nf4) and 20 % (fp4), because block-wise rounding
#: crushes the low-norm columns inverted sampling picks (docs/QUANTIZED.md, perf/quant_accuracy.py)
CROSS_QUANTIZATION_RTOL = 0.25


class CURLoRAModel(BaseTuner):
    """Created by `peft.get_peft_model(model, CURLoRAConfig(...))`; not meant to be built by hand."""

    prefix: str = "curlora_"
    tuner_layer_cls = CURLoRALayer
    target_module_mapping = DEFAULT_TARGET_MODULES

    def _prepare_adapter_config(self, peft_config: CURLoRAConfig, model_config: dict) -> CURLoRAConfig:
        if peft_config.target_modules is None:
            from curlora.tuner.config import default_target_modules

            peft_config.target_modules = set(default_target_modules(model_config.get("model_type")))
        return peft_config

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args, **kwargs) -> None:
        config = self.peft_config[adapter_name]
        # None: a new adapter, whose base quantization is recorded now; else the one it was made on (a load)
        self._recorded_quantization = config.base_quantization
        self._quantization_seen: set[str] = set()
        super().inject_adapter(model, adapter_name, *args, **kwargs)
        recorded, seen = self._recorded_quantization, sorted(self._quantization_seen)
        if recorded is None and seen:
            config.base_quantization = seen[0] if len(seen) == 1 else ",".join(seen)
        elif recorded is not None and seen and seen != [recorded]:
            warnings.warn(
                f"adapter {adapter_name!r} was made on a base quantized as {recorded!r} and is loaded onto layers "
                f"quantized as {','.join(seen)!r}: C and R are rebuilt from this base at the saved indices, so its "
                "update differs by the quantization error there (measured in docs/QUANTIZED.md; the fingerprint "
                f"check is widened to {CROSS_QUANTIZATION_RTOL:.0%} for this load)",
                UserWarning,
                stacklevel=2,
            )
            config.base_quantization = seen[0] if len(seen) == 1 else ",".join(seen)
        link_shared_input_groups(model, CURLoRALinear)  # q/k/v of a block: one kernel launch each way

    def _enable_peft_forward_hooks(self, *args, **kwargs):
        """`adapter_names=[...]` in forward/generate: one adapter (or "__base__") per row (`curlora.tuner.mixed`)."""
        adapter_names = kwargs.pop("adapter_names", None)
        if adapter_names is None:
            return contextlib.nullcontext()
        return adapter_names_hooks(self, CURLoRALayer, adapter_names, num_beams=kwargs.get("num_beams"))

    def _create_and_replace(self, config, adapter_name, target, target_name, parent, current_key, **kwargs):
        if current_key is None:
            raise ValueError("current_key must be given")
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        kind = _quantization_kind(base)
        self._quantization_seen.add(kind)
        recorded = self._recorded_quantization
        cross = recorded is not None and kind not in recorded.split(",")
        if isinstance(target, CURLoRALayer):
            target.update_layer(adapter_name, config, layer_name=current_key, inference_mode=config.inference_mode)
            _widen_fingerprint_check(target, adapter_name, cross)
            return
        new_module = _dispatch_quantized(base, adapter_name, config, current_key, self.model)
        if new_module is None:
            if not isinstance(base, nn.Linear | Conv1D) or not base.weight.is_floating_point():
                raise CurloraError(
                    f"module {current_key!r} is a {type(base).__name__}; CURLoRA adapts nn.Linear, Conv1D and "
                    "bitsandbytes Linear4bit/Linear8bitLt only, so leave it out of target_modules"
                )
            new_module = CURLoRALinear(target, adapter_name, config, layer_name=current_key)
        _widen_fingerprint_check(new_module, adapter_name, cross)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        # U keeps the dtype the config asks for (float32 by default), whatever PEFT's autocast would pick
        u_dtype = getattr(torch, self.peft_config[adapter_name].u_dtype)
        for module in self.model.modules():
            if isinstance(module, CURLoRALayer) and adapter_name in module.curlora_U:
                param = module.curlora_U[adapter_name]
                if param.dtype != u_dtype:
                    param.data = param.data.to(u_dtype)


def _quantization_kind(base: nn.Module) -> str:
    """'none' for a dense layer, else its bitsandbytes quantization (`curlora.tuner.bnb.quantization_kind`)."""
    if not type(base).__module__.startswith("bitsandbytes"):
        return "none"
    from curlora.tuner import bnb  # noqa: PLC0415 (bitsandbytes is an optional dependency)

    return bnb.quantization_kind(base)


def _widen_fingerprint_check(layer: nn.Module, adapter_name: str, cross: bool) -> None:
    """Let an adapter made on a base quantized differently pass the fingerprint check at a wider tolerance."""
    widened = layer.__dict__.setdefault("_curlora_fingerprint_rtol", {})
    if cross:
        widened[adapter_name] = CROSS_QUANTIZATION_RTOL
    else:
        widened.pop(adapter_name, None)


def _dispatch_quantized(base: nn.Module, adapter_name: str, config, layer_name: str, model: nn.Module):
    """The bitsandbytes variant for a quantized base layer (`curlora.tuner.bnb`), else None."""
    if not type(base).__module__.startswith("bitsandbytes"):
        return None
    from curlora.tuner import bnb  # noqa: PLC0415 (bitsandbytes is an optional dependency)

    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return bnb.dispatch(base, adapter_name, config, layer_name, dtype)
