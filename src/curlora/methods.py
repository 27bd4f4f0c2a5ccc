"""Methods the bench compares, parsed from specs like `curlora-16`, `lora-4:lr=1e-3`, `head_only`, `full`.

Spec grammar: NAME[-RANK][:key=value[,key=value...]] with keys lr, sampling (curlora only), alpha.
The spec, as written, is the method's label in results and reports.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from curlora.cur import check_strategy
from curlora.errors import CurloraError
from curlora.models.info import target_layers
from curlora.tuner.config import CURLoRAConfig, default_target_modules

METHODS = ("curlora", "lora", "head_only", "full")
_SPEC = re.compile(r"^(?P<name>[a-z_]+?)(?:-(?P<rank>\d+))?(?::(?P<opts>.+))?$")


def lora_config(
    r: int,
    alpha: float = 1.0,
    target_modules: list[str] | None = None,
    model_type: str | None = None,
    **kwargs,
) -> LoraConfig:
    """PEFT LoRA configured like the original CURLoRA study's LoRA.

    The original computes α·x·A·B with no division by r, A Kaiming-uniform and B zero. PEFT computes
    (lora_alpha / r)·x·Aᵀ·Bᵀ with the same initialisation, so lora_alpha = α·r gives the same update.
    """
    return LoraConfig(
        r=r,
        lora_alpha=alpha * r,
        lora_dropout=0.0,
        bias="none",
        init_lora_weights=True,
        target_modules=target_modules or default_target_modules(model_type),
        fan_in_fan_out=model_type == "gpt2",  # GPT-2's Conv1D stores weights in × out
        **kwargs,
    )


@dataclass(frozen=True)
class MethodSpec:
    label: str
    method: str
    rank: int | None = None
    lr: float | None = None  # None: the preset's learning rate
    sampling: str | None = None  # curlora only
    alpha: float | None = None

    @property
    def has_adapter(self) -> bool:
        return self.method in ("curlora", "lora")


def parse_method(spec: str) -> MethodSpec:
    spec = spec.strip()
    m = _SPEC.match(spec)
    if not m or m.group("name") not in METHODS:
        raise CurloraError(
            f"unknown method {spec!r}; use one of curlora-R, lora-R, head_only, full "
            "(R a rank, e.g. curlora-16; options like curlora-16:lr=1e-3,sampling=uniform)"
        )
    name, rank = m.group("name"), m.group("rank")
    if name in ("curlora", "lora") and rank is None:
        raise CurloraError(f"method {spec!r} needs a rank, e.g. {name}-16")
    if name in ("head_only", "full") and rank is not None:
        raise CurloraError(f"method {name} takes no rank; write {name!r}")
    if rank is not None and int(rank) < 1:
        raise CurloraError(f"method {spec!r} has rank {int(rank)}; the rank must be an integer >= 1, e.g. {name}-16")
    fields: dict = {}
    for opt in filter(None, (m.group("opts") or "").split(",")):
        key, _, value = opt.partition("=")
        try:
            if key in ("lr", "alpha"):
                fields[key] = float(value)
                if not math.isfinite(fields[key]) or (key == "lr" and fields[key] <= 0):
                    allowed = "a finite number > 0" if key == "lr" else "a finite number"
                    raise CurloraError(f"{key} must be {allowed}")
            elif key == "sampling" and name == "curlora":
                check_strategy(value)
                fields[key] = value
            else:
                raise CurloraError(f"option {key!r} does not apply to {name}")
        except ValueError as err:
            raise CurloraError(f"bad option {opt!r} in method {spec!r}: {err}") from None
    return MethodSpec(label=spec, method=name, rank=int(rank) if rank else None, **fields)


def check_rank_fits(model: nn.Module, spec: MethodSpec, target_modules: list[str]) -> None:
    layers = target_layers(model, target_modules)  # raises when nothing matches
    if spec.rank is None:
        return
    smallest = min(min(layer["out"], layer["in"]) for layer in layers)
    if spec.rank > smallest:
        raise CurloraError(
            f"rank {spec.rank} of {spec.label!r} is larger than the smallest adapted weight dimension "
            f"({smallest}); choose a rank <= {smallest}"
        )


def wrap_model(
    model: nn.Module, spec: MethodSpec, *, target_modules: list[str], alpha: float, sampling: str, seed: int
) -> nn.Module:
    """Make `model` trainable the way `spec` says. Returns the model to train (a PeftModel for adapters)."""
    model.requires_grad_(False)
    alpha = spec.alpha if spec.alpha is not None else alpha
    if spec.method == "curlora":
        config = CURLoRAConfig(
            r=spec.rank, alpha=alpha, target_modules=target_modules, sampling=spec.sampling or sampling, seed=seed
        )
        return get_peft_model(model, config)
    if spec.method == "lora":
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        return get_peft_model(
            model, lora_config(spec.rank, alpha, target_modules=target_modules, model_type=model_type)
        )
    if spec.method == "full":
        for layer in target_layers(model, target_modules):
            module = model.get_submodule(layer["name"])
            # an fp32 master copy for AdamW; autocast runs the matmuls in the compute dtype
            module.float()
            module.weight.requires_grad_(True)
    return model


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What the bench saves after each task for methods without a PEFT adapter (full: the target weights)."""
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
