"""CURLoRA on bitsandbytes bases: `Linear4bit` (nf4/fp4, with or without double quantization) and `Linear8bitLt`.

C and R are slices of the weight the layer really computes with, i.e. the *dequantized* weight in the compute
dtype; sampling probabilities come from it too. C and R are held in that dtype like on a dense base, so the
adapter (U, indices, fingerprint) is saved exactly as on a dense base.

Whether x·Rᵀ can be read off the base output depends on how the layer multiplies:
- 4-bit: bitsandbytes dequantizes W to the compute dtype and runs an ordinary GEMM (a GEMV for one token), so
  the base output's rows are x·Rᵀ to the compute dtype's rounding: the base-output path is used.
- 8-bit (LLM.int8()): x itself is quantized row-wise to int8 before the product, so the base output's rows hold
  x's quantization error too (~1 % relative): the adapter computes x·Rᵀ directly from x instead.

Merging dequantizes, adds α·C·U·R and re-quantizes (as PEFT does for LoRA); the re-quantization rounds, so a
merge changes outputs by more than the adapter alone and unmerging does not give back the exact bits. Both warn.
"""

from __future__ import annotations

import warnings
from typing import Any

import bitsandbytes as bnb
import torch
from peft.tuners.tuners_utils import check_adapters_to_merge

from curlora import cur
from curlora.errors import CurloraError
from curlora.tuner.layer import CURLoRALinear

#: bitsandbytes layer classes this module adapts, by name (for error messages and dispatch without importing bnb)
SUPPORTED = ("Linear4bit", "Linear8bitLt")

MERGE_WARNING = (
    "merging a CURLoRA adapter into a {bits}-bit layer re-quantizes the weight: outputs change by the rounding "
    "as well as by the adapter, and unmerging does not restore the exact bits (docs/QUANTIZED.md gives measured "
    "errors); for exact inference keep the adapter unmerged or merge into the dense (bf16) model"
)


def dequantize_4bit(weight: torch.Tensor) -> torch.Tensor:
    """The float weight a `Params4bit` stands for, in the dtype it was quantized from (out × in)."""
    data, state = weight.data, weight.quant_state
    if getattr(state, "packing_format_for_cpu", False):
        # the CPU inference kernels repack the weight in place; their private inverse is the only way back
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

        data, state = _convert_weight_packed_for_cpu_inverse(data, state)
    return bnb.functional.dequantize_4bit(data, state)


def dequantize_8bit(layer: torch.nn.Module) -> torch.Tensor:
    """The float32 weight an LLM.int8() layer stands for: int8 rows times their scale (SCB) / 127."""
    weight = layer.weight
    scb = getattr(weight, "SCB", None)
    if scb is None:
        scb = layer.state.SCB
    if scb is None or weight.dtype != torch.int8:
        raise CurloraError(
            "this Linear8bitLt is not quantized yet (no int8 weight and scale); move the model to its device "
            "(or load it with BitsAndBytesConfig(load_in_8bit=True)) before adding a CURLoRA adapter"
        )
    return bnb.functional.int8_vectorwise_dequant(weight.data, scb.to(weight.device))


def quantization_kind(module: torch.nn.Module) -> str:
    """'nf4', 'fp4' (+'-dq' with double quantization), 'int8' for bitsandbytes layers, 'none' for dense ones."""
    name = type(module).__name__
    if isinstance(module, bnb.nn.Linear4bit):
        weight = module.weight
        state = getattr(weight, "quant_state", None)
        quant_type = getattr(state, "quant_type", None) or getattr(weight, "quant_type", "fp4")
        nested = bool(getattr(state, "nested", False)) if state is not None else bool(weight.compress_statistics)
        return quant_type + ("-dq" if nested else "")
    if isinstance(module, bnb.nn.Linear8bitLt):
        return "int8"
    if "4bit" in name or "8bit" in name:  # e.g. a bitsandbytes subclass or another library's quantized layer
        raise CurloraError(
            f"CURLoRA does not know the quantized layer type {name}; supported: nn.Linear, Conv1D and "
            f"bitsandbytes {', '.join(SUPPORTED)}; leave it out of target_modules"
        )
    return "none"


class _QuantizedCURLoRA(CURLoRALinear):
    """What the 4-bit and 8-bit variants share: dense delta in the compute dtype, merge by re-quantizing."""

    bits = 0

    def _compute_dtype(self) -> torch.dtype:
        raise NotImplementedError

    def _dequantized(self) -> torch.Tensor:
        raise NotImplementedError

    def _requantize(self, dense: torch.Tensor) -> None:
        raise NotImplementedError

    def dense_weight(self) -> torch.Tensor:
        # C, R and the sampling probabilities: the dequantized weight as the layer multiplies with it
        return self._dequantized().to(self._compute_dtype())

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """α·C·U·R (out × in) in the compute dtype (the packed storage dtype is no float)."""
        c, u, r = (
            t.float()
            for t in (self.curlora_C[adapter_name], self.curlora_U[adapter_name], self.curlora_R[adapter_name])
        )
        return cur.delta_weight(c, u, r, self.curlora_alpha[adapter_name]).to(self._compute_dtype())

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        adapter_names = check_adapters_to_merge(self, adapter_names)
        for name in adapter_names:
            if name not in self.curlora_U:
                continue
            warnings.warn(MERGE_WARNING.format(bits=self.bits), UserWarning, stacklevel=2)
            dense = self._dequantized()
            merged = (dense.float() + self.get_delta_weight(name).float()).to(dense.dtype)
            if safe_merge and not torch.isfinite(merged).all():
                raise CurloraError(f"merging adapter {name!r} gives NaN/Inf weights; the adapter is broken")
            self._requantize(merged)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if name in self.curlora_U:
                warnings.warn(MERGE_WARNING.format(bits=self.bits), UserWarning, stacklevel=2)
                dense = self._dequantized()
                self._requantize((dense.float() - self.get_delta_weight(name).float()).to(dense.dtype))


class CURLoRALinear4bit(_QuantizedCURLoRA):
    """CURLoRA around a bitsandbytes `Linear4bit`; x·Rᵀ is read off the base output (see the module docstring)."""

    bits = 4

    def _compute_dtype(self) -> torch.dtype:
        base = self.get_base_layer()
        return base.compute_dtype or base.weight.quant_state.dtype

    def _dequantized(self) -> torch.Tensor:
        return dequantize_4bit(self.get_base_layer().weight)

    def _requantize(self, dense: torch.Tensor) -> None:
        base = self.get_base_layer()
        old = base.weight
        state = old.quant_state
        base.weight = bnb.nn.Params4bit(
            dense.to("cpu"),
            requires_grad=False,
            blocksize=state.blocksize,
            compress_statistics=bool(state.nested),
            quant_type=state.quant_type,
            quant_storage=old.quant_storage,
            module=base,
        ).to(old.device)

    def _frozen_plain_base(self, name: str) -> bool:
        base = self.get_base_layer()
        return (
            self.curlora_reuse_base_output[name]
            and base.compute_dtype in (None, self.curlora_C[name].dtype)
            and (base.bias is None or not base.bias.requires_grad)
        )


class CURLoRALinear8bitLt(_QuantizedCURLoRA):
    """CURLoRA around a bitsandbytes `Linear8bitLt`; x·Rᵀ always from x (int8 activations: see the docstring)."""

    bits = 8

    def __init__(self, base_layer, adapter_name, config, layer_name="", compute_dtype=None, **kwargs: Any):
        # LLM.int8() layers have no compute dtype of their own (their output takes the input's): the model's.
        # Set before CURLoRALinear.__init__, which builds C and R through dense_weight.
        self._curlora_compute_dtype = compute_dtype
        super().__init__(base_layer, adapter_name, config, layer_name=layer_name, **kwargs)

    def _compute_dtype(self) -> torch.dtype:
        return self._curlora_compute_dtype or torch.float32

    def _dequantized(self) -> torch.Tensor:
        return dequantize_8bit(self.get_base_layer())

    def _requantize(self, dense: torch.Tensor) -> None:
        base = self.get_base_layer()
        old = base.weight
        base.weight = bnb.nn.Int8Params(dense.to("cpu"), requires_grad=False, has_fp16_weights=old.has_fp16_weights).to(
            old.device
        )
        base.state.reset_grads()

    def _frozen_plain_base(self, name: str) -> bool:
        return False


def dispatch(target: torch.nn.Module, adapter_name: str, config, layer_name: str, model_dtype: torch.dtype):
    """A CURLoRA layer for a bitsandbytes target, or None when `target` is not one."""
    if isinstance(target, bnb.nn.Linear4bit):
        return CURLoRALinear4bit(target, adapter_name, config, layer_name=layer_name)
    if isinstance(target, bnb.nn.Linear8bitLt):
        if target.state.has_fp16_weights:
            raise CurloraError(
                f"{layer_name}: this Linear8bitLt keeps trainable fp16 weights (has_fp16_weights=True); CURLoRA "
                "adapts frozen int8 layers as BitsAndBytesConfig(load_in_8bit=True) loads them"
            )
        return CURLoRALinear8bitLt(target, adapter_name, config, layer_name=layer_name, compute_dtype=model_dtype)
    quantization_kind(target)  # raises for a quantized layer type this module does not know
    return None
