"""Alternative `CURLoRALinear.forward` implementations, for A/B timing inside the benchmarks only.

`use(model, name)` switches every CURLoRA layer of `model` to one of the implementations below by changing
the layer's class to a subclass of `CURLoRALinear` that overrides `forward` (isinstance checks still hold,
and torch.compile sees a different type, so compiled code of one variant is never reused for another).
They all compute y = base(x) + α·((x·Rᵀ)·Uᵀ)·Cᵀ; they differ only in how:

- ``library``: whatever `curlora.tuner.layer.CURLoRALinear.forward` does now.
- ``orig``: the forward before the performance pass: three `F.linear` calls, then a separate `result + delta`
  over the out-sized activation.
- ``gather``: x·Rᵀ taken from the base output instead of a GEMM over x: R holds rows of W, so
  x·Rᵀ = (x·Wᵀ)[..., rows]. Exact only while R == W[rows] (the base weight has not changed since the adapter
  was created and nothing is merged), the base is a bias-free nn.Linear and W is frozen; the variant falls back
  to the library path otherwise. Benchmark-only: it is not in the library.
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


def gather_ok(layer: CURLoRALinear, result: torch.Tensor, name: str) -> bool:
    """Whether (x·Wᵀ)[..., rows] is x·Rᵀ here: plain bias-free nn.Linear, frozen W, same dtype as R."""
    base = layer.base_layer
    return (
        type(base) is nn.Linear
        and base.bias is None
        and not base.weight.requires_grad
        and result.dtype == layer.curlora_R[name].dtype
    )


class GatherCURLoRALinear(CURLoRALinear):
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters or self.merged:
            return super().forward(x, *args, **kwargs)
        result = base_out = self.base_layer(x, *args, **kwargs)
        for name in self.active_adapters:
            if name not in self.curlora_U:
                continue
            if not gather_ok(self, base_out, name):
                return super().forward(x, *args, **kwargs)
            c = self.curlora_C[name]
            alpha, u = self.curlora_alpha[name], self.curlora_U[name]
            u = (u if alpha == 1.0 else alpha * u).to(c.dtype)
            h = F.linear(base_out.index_select(-1, self.curlora_rows[name]), u)
            out_f, rank = c.shape
            result = torch.addmm(result.reshape(-1, out_f), h.reshape(-1, rank), c.t()).view(result.shape)
        return result


CLASSES: dict[str, type[CURLoRALinear]] = {
    "library": CURLoRALinear,
    "orig": OrigCURLoRALinear,
    "gather": GatherCURLoRALinear,
}


def use(model: nn.Module, name: str) -> nn.Module:
    """Switch every CURLoRA layer in `model` (or `model` itself) to forward implementation `name`."""
    if name not in CLASSES:
        raise ValueError(f"unknown layer variant {name!r}; choose one of {', '.join(CLASSES)}")
    for module in model.modules():
        if isinstance(module, CURLoRALinear):
            module.__class__ = CLASSES[name]
    return model
