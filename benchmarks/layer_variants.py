"""Alternative `CURLoRALinear.forward` implementations, for A/B timing inside the benchmarks only.

`use(model, name)` switches every CURLoRA layer of `model` to one of the implementations below by changing
the layer's class to a subclass of `CURLoRALinear` that overrides `forward` (isinstance checks still hold,
and torch.compile sees a different type, so compiled code of one variant is never reused for another).
They all compute y = base(x) + α·((x·Rᵀ)·Uᵀ)·Cᵀ; they differ only in how:

- ``library``: whatever `curlora.tuner.layer.CURLoRALinear.forward` does now (x·Rᵀ taken from the base output
  where that is exact, see the module docstring of `curlora.tuner.layer`).
- ``xr``: the library's x·Rᵀ path everywhere (a GEMM over x, the result added by one addmm): the forward of
  the first performance pass, before x·Rᵀ was taken from the base output.
- ``orig``: the forward before any performance pass: three `F.linear` calls, then a separate
  `result + delta` over the out-sized activation.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from curlora.tuner.layer import CURLoRALinear


class OrigCURLoRALinear(CURLoRALinear):
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        for name in self.active_adapters:
            if name not in self.curlora_U:
                continue
            c, r = self.curlora_C[name], self.curlora_R[name]
            u = (self.curlora_alpha[name] * self.curlora_U[name]).to(c.dtype)
            h = F.linear(F.linear(x.to(r.dtype), r), u)
            result = result + F.linear(h, c).to(result.dtype)
        return result


class XRCURLoRALinear(CURLoRALinear):
    def _can_reuse_base_output(self, name: str, result: torch.Tensor) -> bool:
        return False


CLASSES: dict[str, type[CURLoRALinear]] = {
    "library": CURLoRALinear,
    "orig": OrigCURLoRALinear,
    "xr": XRCURLoRALinear,
}


def use(model: nn.Module, name: str) -> nn.Module:
    """Switch every CURLoRA layer in `model` (or `model` itself) to forward implementation `name`."""
    if name not in CLASSES:
        raise ValueError(f"unknown layer variant {name!r}; choose one of {', '.join(CLASSES)}")
    for module in model.modules():
        if isinstance(module, CURLoRALinear):
            module.__class__ = CLASSES[name]
    return model
