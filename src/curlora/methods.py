"""Methods the bench compares, parsed from specs like `curlora-16`, `lora-4:lr=1e-3`, `head_only`, `full`, `probe`.

Spec grammar: NAME[-RANK][:key=value[,key=value...]] with keys lr, head_lr (the classification heads' own rate),
sampling (CURLoRA and its controls), alpha (not vera), targets (the adapted modules of this method, joined by '+',
e.g. `lora-1:targets=v_proj` for a LoRA with CURLoRA-16's parameter count on a Llama), head_init (`probe`: each
task's head starts as the linear probe fitted on the model's features at that point, then trains with the adapter:
linear-probe-then-fine-tune).
`probe` trains nothing by gradient: each task's head is a converged L2-regularised logistic regression on the
frozen model's features (`curlora.recipes.bench.probe`), the zero-forgetting reference. NAME may itself hold '-'
(`cur-random-16`). The spec, as written, is the method's label in results and reports. Controls of CURLoRA's
subspace, r² trainable parameters each (docs/METHODS.md): `cur-random-R`, `svd-top-R`, `svd-bottom-R`; and
PEFT's VeRA, `vera-R`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from peft import LoraConfig, VeraConfig, get_peft_model
from torch import nn

from curlora.cur import check_strategy
from curlora.errors import CurloraError
from curlora.models.info import target_layers
from curlora.tuner.config import CURLoRAConfig, default_target_modules

#: CURLoRA and its controls: method name -> CURLoRAConfig.basis (`curlora.tuner.basis`)
CUR_BASES = {"curlora": "cur", "cur-random": "random", "svd-top": "svd-top", "svd-bottom": "svd-bottom"}
RANKED = (*CUR_BASES, "lora", "vera")
METHODS = (*RANKED, "head_only", "full", "probe")
UNRANKED = ("head_only", "full", "probe")
#: methods whose backbone stays frozen: only heads learn, so adapter options do not apply
FROZEN_BACKBONE = ("head_only", "probe")
_SPEC = re.compile(r"^(?P<name>[a-z_]+(?:-[a-z_]+)*)(?:-(?P<rank>\d+))?(?::(?P<opts>.+))?$")


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


def vera_config(
    r: int,
    target_modules: list[str] | None = None,
    model_type: str | None = None,
    seed: int = 0,
    **kwargs,
) -> VeraConfig:
    """PEFT VeRA on CURLoRA's targets: ΔW = Λ_b·B·Λ_d·A with one frozen random pair A (r × in), B (out × r) shared
    by all adapted layers, and per layer only the vectors λ_b (out) and λ_d (r) trained — out + r parameters.

    Layers of different shapes (GQA's k/v are narrower than q) use the top-left slices of one pair sized by the
    largest in and out. λ_b starts at zero, so the model starts as the base. The pair is drawn from `seed` and
    saved with the adapter (PEFT's default), so loading never depends on regenerating it.
    """
    return VeraConfig(
        r=r,
        projection_prng_key=seed,
        save_projection=True,
        vera_dropout=0.0,
        bias="none",
        target_modules=target_modules or default_target_modules(model_type),
        fan_in_fan_out=model_type == "gpt2",
        **kwargs,
    )


@dataclass(frozen=True)
class MethodSpec:
    label: str
    method: str
    rank: int | None = None
    lr: float | None = None  # None: the preset's learning rate
    sampling: str | None = None  # CURLoRA and its controls only
    alpha: float | None = None
    head_lr: float | None = None  # None: the bench's head_lr, else the method's lr
    targets: tuple[str, ...] | None = None  # None: the bench's target modules
    head_init: str | None = None  # "probe": each head starts as the probe fitted on the current model's features

    @property
    def has_adapter(self) -> bool:
        return self.method in RANKED

    @property
    def frozen_backbone(self) -> bool:
        """Only heads learn (head_only, probe): features are embedded once per task and never change."""
        return self.method in FROZEN_BACKBONE

    @property
    def takes_sampling(self) -> bool:
        """Whether a `sampling=` option applies (CURLoRA and its controls)."""
        return self.method in CUR_BASES

    @property
    def takes_alpha(self) -> bool:
        """Whether an `alpha=` option changes anything (VeRA has no scale; head_only/full have no adapter)."""
        return self.has_adapter and self.method != "vera"


def parse_method(spec: str) -> MethodSpec:
    spec = spec.strip()
    m = _SPEC.match(spec)
    if not m or m.group("name") not in METHODS:
        raise CurloraError(
            f"unknown method {spec!r}; use one of {', '.join(f'{n}-R' for n in RANKED)}, {', '.join(UNRANKED)} "
            "(R a rank, e.g. curlora-16; options like curlora-16:lr=1e-3,sampling=uniform)"
        )
    name, rank = m.group("name"), m.group("rank")
    if name in RANKED and rank is None:
        raise CurloraError(f"method {spec!r} needs a rank, e.g. {name}-16")
    if name in UNRANKED and rank is not None:
        raise CurloraError(f"method {name} takes no rank; write {name!r}")
    if rank is not None and int(rank) < 1:
        raise CurloraError(f"method {spec!r} has rank {int(rank)}; the rank must be an integer >= 1, e.g. {name}-16")
    fields: dict = {}
    for opt in filter(None, (m.group("opts") or "").split(",")):
        key, _, value = opt.partition("=")
        try:
            if key in ("lr", "head_lr") or (key == "alpha" and name != "vera"):  # VeRA has no scale to set
                fields[key] = float(value)
                if not math.isfinite(fields[key]) or (key != "alpha" and fields[key] <= 0):
                    allowed = "a finite number" if key == "alpha" else "a finite number > 0"
                    raise CurloraError(f"{key} must be {allowed}")
            elif key == "sampling" and name in CUR_BASES:
                check_strategy(value)
                fields[key] = value
            elif key == "head_init" and name not in FROZEN_BACKBONE:
                if value not in ("probe", "random"):
                    raise CurloraError("head_init must be probe (linear probe, then fine-tune) or random")
                fields[key] = None if value == "random" else value
            elif key == "targets" and name not in FROZEN_BACKBONE:
                names = tuple(value.split("+"))
                if not all(re.fullmatch(r"[A-Za-z_][\w.]*", n) for n in names) or len(set(names)) != len(names):
                    raise CurloraError("targets must be module names joined by '+', each once, e.g. q_proj+v_proj")
                fields[key] = names
            else:
                raise CurloraError(f"option {key!r} does not apply to {name}")
        except ValueError as err:
            raise CurloraError(f"bad option {opt!r} in method {spec!r}: {err}") from None
    return MethodSpec(label=spec, method=name, rank=int(rank) if rank else None, **fields)


def method_targets(spec: MethodSpec, target_modules: list[str]) -> list[str]:
    """The modules `spec` adapts: its own `targets=` option, else the bench's."""
    return list(spec.targets) if spec.targets else list(target_modules)


def spec_family(spec: str) -> str:
    """A spec without its learning rate: `lora-1:lr=0.001,targets=v_proj` -> `lora-1:targets=v_proj`. Studies compare
    families, each at the learning rate chosen on validation data."""
    name, _, opts = spec.partition(":")
    kept = [o for o in opts.split(",") if o and not o.startswith("lr=")]
    return name + (":" + ",".join(kept) if kept else "")


def check_rank_fits(model: nn.Module, spec: MethodSpec, target_modules: list[str]) -> None:
    layers = target_layers(model, method_targets(spec, target_modules))  # raises when nothing matches
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
    target_modules = method_targets(spec, target_modules)
    if spec.method in CUR_BASES:
        config = CURLoRAConfig(
            r=spec.rank,
            alpha=alpha,
            target_modules=target_modules,
            sampling=spec.sampling or sampling,
            seed=seed,
            basis=CUR_BASES[spec.method],
        )
        return get_peft_model(model, config)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if spec.method == "lora":
        return get_peft_model(
            model, lora_config(spec.rank, alpha, target_modules=target_modules, model_type=model_type)
        )
    if spec.method == "vera":
        return get_peft_model(
            model, vera_config(spec.rank, target_modules=target_modules, model_type=model_type, seed=seed)
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
