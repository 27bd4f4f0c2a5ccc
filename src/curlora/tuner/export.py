"""Export a CURLoRA adapter as a standard PEFT LoRA adapter with the same ΔW, exactly.

ΔW = α·C·U·R is a rank-r product, so it is a LoRA update with A = R (r × in) and B = α·C·U (out × r) and a
scaling of 1 (lora_alpha = r). Every stack that loads PEFT LoRA folders can then serve CURLoRA adapters.
The trade: a CURLoRA file holds U (r × r) and 2·r indices per layer, the LoRA export r·(in + out) floats
(R and C·U densely), about as large as a LoRA adapter of the same rank.

C and R are rebuilt from the base weights, so the export loads the adapter onto its base model through the
tuner (which checks the fingerprint and refuses another base) and reads the factors off the layers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

import curlora.tuner  # noqa: F401  (registers CURLoRA with PEFT, so PeftModel can load the adapter)
from curlora.errors import CurloraError
from curlora.files import atomic_dir
from curlora.models.load import load_model
from curlora.tuner.layer import CURLoRALayer
from curlora.tuner.saved import ADAPTER_CONFIG, ADAPTER_WEIGHTS, check_adapter_dir


def _curlora_config(folder: Path) -> dict | None:
    """The folder's adapter config if it is a CURLoRA adapter, else None."""
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) and config.get("peft_type") == "CURLORA" else None


def _adapters_in(adapter_dir: Path) -> dict[str, Path]:
    """{adapter name: folder}: the root adapter ("default") and any named ones that save_pretrained put in
    subfolders. Refuses a folder that holds no CURLoRA adapter, before anything is loaded or written."""
    if not adapter_dir.is_dir():
        raise CurloraError(f"{adapter_dir} is not a folder; pass a CURLoRA adapter folder written by save_pretrained()")
    found = {}
    if (adapter_dir / ADAPTER_CONFIG).is_file():
        found["default"] = adapter_dir
    for sub in sorted(p for p in adapter_dir.iterdir() if p.is_dir() and (p / ADAPTER_CONFIG).is_file()):
        found[sub.name] = sub
    if not found:
        raise CurloraError(f"{adapter_dir} holds no {ADAPTER_CONFIG}; pass a folder written by save_pretrained()")
    for folder in found.values():
        config = check_adapter_dir(folder)
        if config.get("peft_type") != "CURLORA":
            raise CurloraError(
                f"{folder} is a {config.get('peft_type')} adapter, not a CURLoRA one; export-lora converts "
                "CURLoRA adapters only"
            )
    return found


def _load_base(base_model, config: dict) -> nn.Module:
    if isinstance(base_model, nn.Module):
        return base_model
    name = base_model if base_model is not None else config.get("base_model_name_or_path")
    if not name:
        raise CurloraError(
            "the adapter does not record its base model; name it (--model NAME, or base_model=...): the "
            "export rebuilds C and R from the base weights"
        )
    return load_model(os.fspath(name))[0]


def _target_names(model: nn.Module, adapted: list[str]) -> list[str]:
    """Leaf names (q_proj, ...) where they pick out exactly the adapted layers, as engines expect; else the
    full module paths."""
    leaves = sorted({n.rsplit(".", 1)[-1] for n in adapted})
    same = {
        n
        for n, m in model.named_modules()
        if n.rsplit(".", 1)[-1] in leaves
        and isinstance(m, nn.Linear | Conv1D | CURLoRALayer)
        and not n.endswith(".base_layer")
    }
    return leaves if same == set(adapted) else sorted(adapted)


def _lora_tensors(peft_model, adapter: str) -> tuple[dict[str, torch.Tensor], list[str], int, bool]:
    """LoRA A/B tensors (float32) for one loaded CURLoRA adapter, their module paths, rank, fan_in_fan_out."""
    tensors, modules, ranks, conv1d = {}, [], set(), False
    for name, layer in peft_model.named_modules():
        if not isinstance(layer, CURLoRALayer) or adapter not in layer.curlora_U:
            continue
        c = layer.curlora_C[adapter].detach().double()
        r = layer.curlora_R[adapter].detach().double()
        u = layer.curlora_U[adapter].detach().double()
        # products in float64, stored in float32: the export adds no rounding beyond float32's
        tensors[f"{name}.lora_A.weight"] = r.float().contiguous().cpu()
        tensors[f"{name}.lora_B.weight"] = (layer.curlora_alpha[adapter] * c @ u).float().contiguous().cpu()
        modules.append(name.removeprefix("base_model.model."))
        ranks.add(u.shape[0])
        conv1d = conv1d or bool(layer.fan_in_fan_out)
    if len(ranks) != 1:
        raise CurloraError(f"adapter {adapter!r} has layers of ranks {sorted(ranks)}; expected one rank")
    return tensors, modules, ranks.pop(), conv1d


def _passthrough(folder: Path) -> dict[str, torch.Tensor]:
    """Saved tensors that are not CURLoRA's (modules_to_save, e.g. a classification head): kept as they are."""
    with safe_open(str(folder / ADAPTER_WEIGHTS), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys() if ".curlora_" not in k}


def export_lora(
    adapter_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    base_model: str | os.PathLike | nn.Module | None = None,
    *,
    force: bool = False,
) -> dict[str, Path]:
    """Write the CURLoRA adapter(s) in `adapter_dir` as standard PEFT LoRA adapter(s) in `out_dir`.

    `base_model`: the model the adapter was trained on (a loaded model, the built-in name, a folder or hub id);
    None takes the adapter config's `base_model_name_or_path`. A model passed in is left as it was.
    Named adapters saved in subfolders are exported to the same subfolders. The folder is written whole or not
    at all; an existing `out_dir` is refused unless `force`. Returns {adapter name: exported folder}.
    """

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    adapters = _adapters_in(adapter_dir)
    if out_dir.resolve() == adapter_dir.resolve() or adapter_dir.resolve() in out_dir.resolve().parents:
        raise CurloraError(f"{out_dir} is inside the adapter folder {adapter_dir}; export to another folder")
    if out_dir.exists() and not force:
        raise CurloraError(f"{out_dir} already exists; choose another folder or pass --force to replace it")
    first_config = _curlora_config(adapters["default"] if "default" in adapters else next(iter(adapters.values())))
    model = _load_base(base_model, first_config)
    peft_model = None
    try:
        for name, folder in adapters.items():
            if peft_model is None:
                peft_model = PeftModel.from_pretrained(model, str(folder), adapter_name=name)
            else:
                peft_model.load_adapter(str(folder), adapter_name=name)
        staged = {}
        for name, folder in adapters.items():
            config = _curlora_config(folder)
            tensors, modules, rank, conv1d = _lora_tensors(peft_model, name)
            if not tensors:
                raise CurloraError(f"adapter {name!r} in {folder} adapts no layer of this model")
            extra = _passthrough(folder)
            lora = LoraConfig(
                r=rank,
                lora_alpha=rank,  # scaling = lora_alpha / r = 1: α is already inside B
                lora_dropout=0.0,
                bias="none",
                target_modules=_target_names(peft_model.get_base_model(), modules),
                fan_in_fan_out=conv1d,
                modules_to_save=config.get("modules_to_save"),
                task_type=config.get("task_type"),
                base_model_name_or_path=config.get("base_model_name_or_path"),
                revision=config.get("revision"),
            )
            staged[name] = ({**extra, **tensors}, lora)
    finally:
        if peft_model is not None:
            peft_model.unload()  # give a caller's model back with its original layers, unmerged
    written = {}
    with atomic_dir(out_dir) as tmp:
        for name, (tensors, lora) in staged.items():
            rel = adapters[name].relative_to(adapter_dir)
            folder = tmp / rel
            folder.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
            lora.save_pretrained(str(folder))
            written[name] = out_dir / rel
    return written
