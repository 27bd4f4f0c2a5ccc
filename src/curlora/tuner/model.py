"""CURLoRAModel: PEFT's BaseTuner that swaps target modules for CURLoRA layers."""

from __future__ import annotations

import contextlib

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn
from transformers.pytorch_utils import Conv1D

from curlora.errors import CurloraError
from curlora.tuner.config import DEFAULT_TARGET_MODULES, CURLoRAConfig
from curlora.tuner.group import link_shared_input_groups
from curlora.tuner.layer import CURLoRALayer, CURLoRALinear
from curlora.tuner.mixed import adapter_names_hooks


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
        super().inject_adapter(model, adapter_name, *args, **kwargs)
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
        if isinstance(target, CURLoRALayer):
            target.update_layer(adapter_name, config, layer_name=current_key, inference_mode=config.inference_mode)
            return
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not isinstance(base, nn.Linear | Conv1D):
            raise CurloraError(
                f"module {current_key!r} is a {type(base).__name__}; CURLoRA adapts nn.Linear and Conv1D only, "
                "so leave it out of target_modules"
            )
        new_module = CURLoRALinear(target, adapter_name, config, layer_name=current_key)
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
