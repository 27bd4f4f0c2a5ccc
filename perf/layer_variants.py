"""Alternative `CURLoRALinear.forward` implementations, for A/B timing inside the benchmarks only.

`use(model, name)` switches every CURLoRA layer of `model` to one of the implementations below by changing
the layer's class to a subclass of `CURLoRALinear` that overrides `forward` (isinstance checks still hold,
and torch.compile sees a different type, so compiled code of one variant is never reused for another).
They all compute y = base(x) + α·((x·Rᵀ)·Uᵀ)·Cᵀ; they differ only in how:

- ``library``: whatever `curlora.tuner.layer.CURLoRALinear.forward` does now (x·Rᵀ taken from the base output
  where that is exact, see the module docstring of `curlora.tuner.layer`).
- ``ungrouped``: the library's forward with its q/k/v groups unlinked (`curlora.tuner.group`): each
  projection's adapter is its own kernel launch (compiled) or its own autograd node (eager), as before the groups.
- ``torch``: the library's base-output path as torch ops, never the Triton kernels of
  `curlora.tuner.kernels` (what the library ran on CUDA before those kernels).
- ``triton``: the Triton kernels also in eager mode (the library uses them only under torch.compile).
- ``xr``: the library's x·Rᵀ path everywhere (a GEMM over x, the result added by one addmm): the forward of
  the first performance pass, before x·Rᵀ was taken from the base output.
- ``orig``: the forward before any performance pass: three `F.linear` calls, then a separate
  `result + delta` over the out-sized activation.
- ``reduce``: for torch.compile only (not measured on a GPU yet): the library's base-output path with the
  rank-r products written as broadcast-multiply + sum over r instead of matrix products, so that inductor can
  fuse them with the gather, the add and the scatter (fewer, larger kernels; the compiled step on a GPU is
  bound by ~9 small kernels per adapted projection). In eager mode this materialises tokens × out × r
  temporaries: never use it uncompiled on real sizes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from curlora.tuner import kernels
from curlora.tuner.layer import CURLoRALinear, scaled_u


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


class _ReducedFromBaseOutput(torch.autograd.Function):
    """The library's `_FromBaseOutput` (no bias, frozen W) with the r-sized products as sums over r."""

    @staticmethod
    def forward(ctx, y, c, u, rows, alpha: float):
        y2 = y.reshape(-1, c.shape[0])
        t = y2.index_select(1, rows)
        ua = scaled_u(u, alpha, c.dtype)
        h = (t[:, :, None] * ua.t()[None]).sum(1)
        out = y2 + (h[:, None, :] * c[None]).sum(-1)
        ctx.save_for_backward(t, ua, c, rows)
        ctx.alpha, ctx.u_dtype = alpha, u.dtype
        return out.view(y.shape)

    @staticmethod
    def backward(ctx, grad_out):
        t, ua, c, rows = ctx.saved_tensors
        g2 = grad_out.reshape(-1, c.shape[0])
        gh = (g2[:, :, None] * c[None]).sum(1)
        grad_u = (gh[:, :, None] * t[:, None, :]).sum(0).to(ctx.u_dtype) * ctx.alpha
        grad_y = g2.index_add(1, rows, (gh[:, :, None] * ua[None]).sum(1))
        return grad_y.view(grad_out.shape), None, grad_u, None, None


class ReduceCURLoRALinear(CURLoRALinear):
    def _add_from_base_output(self, name: str, result: torch.Tensor) -> torch.Tensor:
        if self.base_layer.bias is not None:
            return super()._add_from_base_output(name, result)
        c, u, rows = self.curlora_C[name], self.curlora_U[name], self.curlora_rows[name]
        return _ReducedFromBaseOutput.apply(result, c, u, rows, self.curlora_alpha[name])


class TorchOpsCURLoRALinear(CURLoRALinear):
    def _fused_kernels(self, result: torch.Tensor, rank: int) -> bool:
        return False


class TritonCURLoRALinear(CURLoRALinear):
    def _fused_kernels(self, result: torch.Tensor, rank: int) -> bool:
        return kernels.usable(result, rank, eager=True)


class XRCURLoRALinear(CURLoRALinear):
    def _can_reuse_base_output(self, name: str, result: torch.Tensor) -> bool:
        return False


class UngroupedCURLoRALinear(CURLoRALinear):
    """The library's forward; `use` unlinks the q/k/v groups (a class of its own so compiled code is not shared)."""


CLASSES: dict[str, type[CURLoRALinear]] = {
    "library": CURLoRALinear,
    "ungrouped": UngroupedCURLoRALinear,
    "orig": OrigCURLoRALinear,
    "torch": TorchOpsCURLoRALinear,
    "triton": TritonCURLoRALinear,
    "xr": XRCURLoRALinear,
    "reduce": ReduceCURLoRALinear,
}


def use(model: nn.Module, name: str) -> nn.Module:
    """Switch every CURLoRA layer in `model` (or `model` itself) to forward implementation `name`."""
    if name not in CLASSES:
        raise ValueError(f"unknown layer variant {name!r}; choose one of {', '.join(CLASSES)}")
    for module in model.modules():
        if isinstance(module, CURLoRALinear):
            module.__class__ = CLASSES[name]
            if name in ("ungrouped", "reduce"):  # reduce overrides the per-layer path, which a group bypasses
                module._shared_input_group = None
    return model
