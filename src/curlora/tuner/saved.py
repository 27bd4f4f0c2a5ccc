"""Saving, loading and measuring adapters, with clear errors for broken files.

`load_adapter` trusts nothing it can check: both files parse, checksums (written by `save_adapter`) match, the
config is a valid config of its peft_type, every CURLoRA U is present, r × r, floating point and finite, and after
loading the model holds exactly the saved tensors (no key dropped by an edited target_modules or peft_type). The
base model is checked by each layer's fingerprint (`curlora.cur.fingerprint`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from curlora.errors import CurloraError
from curlora.files import atomic_write_json, sha256_file

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_CHECKSUMS = "adapter_checksums.json"


def save_adapter(model: nn.Module, path: str | Path, **kwargs) -> None:
    """`save_pretrained` plus a SHA-256 of each file, which `load_adapter` checks (a flipped byte in U would
    otherwise load as a silently different adapter)."""
    model.save_pretrained(str(path), **kwargs)
    write_checksums(path)


def write_checksums(path: str | Path) -> None:
    """Record the SHA-256 of a saved adapter's files (in `path` and in the subfolders of named adapters)."""
    path = Path(path)
    for sub in [path, *(p for p in path.iterdir() if p.is_dir())]:
        if (sub / ADAPTER_WEIGHTS).is_file() and (sub / ADAPTER_CONFIG).is_file():
            sums = {name: sha256_file(sub / name) for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS)}
            atomic_write_json(sub / ADAPTER_CHECKSUMS, sums)


def fit_fingerprint_buffers(module: nn.Module, state_dict: dict, prefix: str, *_args) -> None:
    """load_state_dict pre-hook of a CURLoRA layer: size its fingerprint buffers like the incoming ones, so that
    adapters saved with the older 4-number fingerprint still load (and are checked the old way)."""
    for name in list(module.curlora_fingerprint.keys()):
        incoming = state_dict.get(f"{prefix}curlora_fingerprint.{name}")
        if isinstance(incoming, torch.Tensor) and incoming.shape != module.curlora_fingerprint[name].shape:
            device = module.curlora_fingerprint[name].device
            module.curlora_fingerprint[name] = torch.zeros_like(incoming, device=device)


def check_adapter_dir(path: str | Path) -> dict:
    """Validate a saved adapter folder without unpickling anything; return its config dict."""
    path = Path(path)
    config_file, weights_file = path / ADAPTER_CONFIG, path / ADAPTER_WEIGHTS
    for f in (config_file, weights_file):
        if not f.is_file():
            raise CurloraError(f"{f} is missing; pass a folder written by save_pretrained()")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CurloraError(f"{config_file} is not valid JSON ({err}); re-save the adapter") from None
    if not isinstance(config, dict) or "peft_type" not in config:
        raise CurloraError(f"{config_file} has no peft_type; it is not a PEFT adapter config")
    from safetensors import SafetensorError, safe_open

    checksums = path / ADAPTER_CHECKSUMS
    if checksums.is_file():
        try:
            sums = json.loads(checksums.read_text(encoding="utf-8"))
            changed = [name for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS) if sums[name] != sha256_file(path / name)]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            raise CurloraError(f"{checksums} is corrupted; re-save the adapter") from None
        if changed:
            raise CurloraError(
                f"{', '.join(changed)} in {path} changed after the adapter was saved (SHA-256 differs); "
                "copy the adapter again or re-save it"
            )
    tensors = {}
    try:
        with safe_open(str(weights_file), framework="pt") as f:
            for key in f.keys():  # reading every tensor catches truncation, not only a bad header
                tensors[key] = f.get_tensor(key)
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise CurloraError(
            f"{weights_file} is truncated or corrupted ({err}); re-save the adapter or copy it again"
        ) from None
    if str(config.get("peft_type")).upper() == "CURLORA" or any(".curlora_" in k for k in tensors):
        check_curlora_tensors(config, tensors, path)
    return config


def check_curlora_tensors(config: dict, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """A CURLoRA adapter's config and tensors agree: peft_type, r, and per layer a finite r × r floating-point U
    next to its indices and fingerprint. Each error names the field or tensor."""
    config_file = path / ADAPTER_CONFIG
    if str(config.get("peft_type")).upper() != "CURLORA":
        raise CurloraError(
            f"{config_file} says peft_type {config.get('peft_type')!r} but the weights are CURLoRA's; "
            "restore peft_type \"CURLORA\" or re-save the adapter"
        )
    r = config.get("r")
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise CurloraError(f"{config_file}: field r must be a positive integer, got {r!r}")
    layers: dict[str, set[str]] = {}
    for key in tensors:
        if ".curlora_" in key:
            layer, _, kind = key.rpartition(".curlora_")
            layers.setdefault(layer, set()).add(kind)
    if not layers:
        raise CurloraError(f"{path / ADAPTER_WEIGHTS} holds no CURLoRA tensors; re-save the adapter")
    for layer, kinds in sorted(layers.items()):
        missing = {"U", "cols", "rows", "fingerprint"} - kinds
        if missing:
            raise CurloraError(
                f"{path / ADAPTER_WEIGHTS} lacks {', '.join(f'curlora_{k}' for k in sorted(missing))} of {layer}; "
                "the file is incomplete: re-save the adapter"
            )
        u = tensors[f"{layer}.curlora_U"]
        if not u.is_floating_point():
            raise CurloraError(f"curlora_U of {layer} has dtype {u.dtype}, not floating point; re-save the adapter")
        if tuple(u.shape) != (r, r):
            raise CurloraError(
                f"curlora_U of {layer} is {tuple(u.shape)} but {config_file} says r={r}; the field r was "
                f"edited (the weights have r={u.shape[0] if u.ndim else '?'}): restore it or re-save the adapter"
            )
        if not bool(torch.isfinite(u).all()):
            raise CurloraError(f"curlora_U of {layer} holds NaN or Inf; the adapter diverged or the file is corrupted")
        for kind in ("cols", "rows"):
            if tensors[f"{layer}.curlora_{kind}"].numel() != r:
                raise CurloraError(f"curlora_{kind} of {layer} does not hold r={r} indices; re-save the adapter")


def load_adapter(model: nn.Module, path: str | Path, adapter_name: str = "default", is_trainable: bool = False):
    """`PeftModel.from_pretrained` after checking the files; CURLoRA adapters also check the base model."""
    from peft import PeftModel

    import curlora.tuner  # noqa: F401  (registers CURLoRA with PEFT)

    config = check_adapter_dir(path)
    alpha = config.get("alpha")
    if str(config.get("peft_type")).upper() == "CURLORA" and (
        isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha)
    ):
        raise CurloraError(f"{Path(path) / ADAPTER_CONFIG}: field alpha must be a finite number, got {alpha!r}")
    try:
        model = PeftModel.from_pretrained(model, str(path), adapter_name=adapter_name, is_trainable=is_trainable)
    except CurloraError:
        raise
    except (TypeError, ValueError, KeyError, RuntimeError, AttributeError) as err:
        raise CurloraError(
            f"{Path(path) / ADAPTER_CONFIG} does not fit this model or is not a valid config "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); re-save the adapter"
        ) from None
    check_loaded(model, path, adapter_name)
    return model


def check_loaded(model, path: str | Path, adapter_name: str = "default") -> None:
    """After loading: the model holds exactly the saved tensors (an edited target_modules or peft_type would leave
    some out or others at their initial values) with exactly the saved values."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    saved = load_file(str(Path(path) / ADAPTER_WEIGHTS))
    held = get_peft_model_state_dict(model, adapter_name=adapter_name)
    dropped, unsaved = sorted(set(saved) - set(held)), sorted(set(held) - set(saved))
    if dropped or unsaved:
        what = (f"{len(dropped)} saved tensor(s) found no layer (e.g. {dropped[0]})" if dropped else "") + (
            ("; " if dropped else "") + f"{len(unsaved)} layer tensor(s) were not in the file (e.g. {unsaved[0]})"
            if unsaved
            else ""
        )
        raise CurloraError(
            f"{path} does not fit: {what}; target_modules or peft_type in {ADAPTER_CONFIG} differ from what "
            "produced the weights, or the adapter was made for another model"
        )
    for key, value in saved.items():
        if not torch.equal(held[key].detach().cpu().to(value.dtype), value):
            raise CurloraError(f"{key} did not load as saved (dtype or value changed); re-save the adapter")


def adapter_bytes(path: str | Path) -> int:
    """Size of the saved adapter weights file."""
    return (Path(path) / ADAPTER_WEIGHTS).stat().st_size
