"""The numbers behind `curlora info` and `curlora data show`, as plain JSON-serialisable dicts.

Everything about a model is computed from its config on the meta device (shapes only, no weights), so a 7B
or 70B model's numbers take a fraction of a second and no memory:

* ``architecture``: model type, layers, widths, heads, vocabulary, total parameters, tied embeddings;
* ``target_layers``: the layers an adapter would wrap (the same matching PEFT applies), with out × in shapes;
* ``trainable_params`` / ``adapter_file_size``: per method and rank. CURLoRA trains U (r × r) per layer; LoRA
  trains A (r × in) and B (out × r). File sizes are the exact byte sizes of the ``adapter_model.safetensors``
  that ``save_pretrained`` writes, computed from the names, dtypes and shapes of the saved tensors without
  allocating them (``safetensors_header`` reproduces the safetensors layout byte for byte).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from curlora.cur import FINGERPRINT_LEN
from curlora.errors import CurloraError

if TYPE_CHECKING:
    from transformers import PretrainedConfig


DEFAULT_RANKS: tuple[int, ...] = (1, 2, 4, 8, 16, 24)
METHODS = ("curlora", "lora")
#: The prefix PEFT puts before a module path in a saved adapter (PeftModel.base_model.model.<path>).
SAVE_PREFIX = "base_model.model."
#: The safetensors metadata PEFT's save_pretrained writes.
PEFT_METADATA: dict[str, str] = {"format": "pt"}

# safetensors dtype names, their element sizes, and the order in which safetensors lays tensors out in a file
# (larger rank first, then by name): the order of its Rust Dtype enum, descending.
_ST_DTYPES: dict[str, tuple[str, int]] = {
    "float64": ("F64", 8),
    "float32": ("F32", 4),
    "bfloat16": ("BF16", 2),
    "float16": ("F16", 2),
    "int64": ("I64", 8),
    "int32": ("I32", 4),
}
_ST_ORDER = {"I64": 9, "F64": 8, "F32": 7, "I32": 6, "BF16": 5, "F16": 4}
_HEADER_ALIGN = 8
_FINGERPRINT_LEN = FINGERPRINT_LEN  # float64 statistics and samples of C and R, stored as int64 bits


# -- architecture ------------------------------------------------------------------------------------------------


def _first_attr(config: Any, *names: str) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


def _text_config(config: PretrainedConfig) -> PretrainedConfig:
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def architecture(config: PretrainedConfig, model: nn.Module | None = None) -> dict[str, Any]:
    """Model type, depth, widths, heads, vocabulary and (with `model`, may be on meta) total parameters."""
    text = _text_config(config)
    hidden = _first_attr(text, "hidden_size", "n_embd", "d_model")
    heads = _first_attr(text, "num_attention_heads", "n_head")
    kv_heads = _first_attr(text, "num_key_value_heads", "n_kv_heads", "multi_query_group_num") or heads
    intermediate = _first_attr(text, "intermediate_size", "n_inner", "ffn_dim")
    if intermediate is None and getattr(text, "model_type", None) == "gpt2" and hidden:
        intermediate = 4 * hidden  # GPT-2's n_inner=None means 4 × n_embd
    head_dim = _first_attr(text, "head_dim")
    if head_dim is None and hidden and heads:
        head_dim = hidden // heads
    info: dict[str, Any] = {
        "model_type": getattr(config, "model_type", None),
        "architectures": list(getattr(config, "architectures", None) or []),
        "layers": _first_attr(text, "num_hidden_layers", "n_layer", "num_layers"),
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "attention_heads": heads,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "vocab_size": _first_attr(text, "vocab_size"),
        "max_position_embeddings": _first_attr(text, "max_position_embeddings", "n_positions"),
        "tie_word_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
        "total_params": None,
    }
    if model is not None:
        info["total_params"] = count_params(model)
        info["tie_word_embeddings"] = _embeddings_tied(model, info["tie_word_embeddings"])
    return info


def count_params(model: nn.Module) -> int:
    """Parameters of `model`, each shared (tied) tensor counted once; works on the meta device."""
    return sum(p.numel() for p in model.parameters())


def _embeddings_tied(model: nn.Module, default: bool) -> bool:
    try:
        inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return default
    if inp is None or out is None:
        return default
    return out.weight is inp.weight


# -- target layers -----------------------------------------------------------------------------------------------


def parse_targets(targets: str | Sequence[str] | None) -> list[str] | None:
    """``"q_proj, k_proj"`` or a list -> a clean list of module names; None or empty -> None (the defaults)."""
    if targets is None:
        return None
    items = targets.split(",") if isinstance(targets, str) else list(targets)
    cleaned = [str(t).strip() for t in items if str(t).strip()]
    return cleaned or None


def _layer_shape(module: nn.Module) -> tuple[str, int, int] | None:
    """(kind, out, in) for the layer types CURLoRA can wrap, else None."""
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, nn.Linear):
        return "Linear", module.out_features, module.in_features
    if isinstance(module, Conv1D):
        n_in, n_out = module.weight.shape  # Conv1D stores its weight as in × out
        return "Conv1D", int(n_out), int(n_in)
    return None


def target_layers(
    model: nn.Module, targets: str | Sequence[str] | None = None, model_type: str | None = None
) -> list[dict[str, Any]]:
    """The modules that CURLoRA and the LoRA baseline wrap: ``[{"name", "kind", "out", "in"}, ...]``.

    Matching is PEFT's own (a name equals a target or ends with ``.<target>``). `targets` None means the
    defaults for the model type (`curlora.default_target_modules`).
    """
    from peft.tuners.tuners_utils import check_target_module_exists

    from curlora.tuner.config import CURLoRAConfig, default_target_modules

    if model_type is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
    wanted = parse_targets(targets) or default_target_modules(model_type)
    matcher = CURLoRAConfig(r=1, target_modules=wanted)
    found: list[dict[str, Any]] = []
    unsupported: list[str] = []
    for name, module in model.named_modules():
        if not name or not check_target_module_exists(matcher, name):
            continue
        shape = _layer_shape(module)
        if shape is None:
            unsupported.append(f"{name} ({type(module).__name__})")
            continue
        kind, out_f, in_f = shape
        found.append({"name": name, "kind": kind, "out": out_f, "in": in_f})
    if unsupported:
        shown = ", ".join(unsupported[:3]) + (f" and {len(unsupported) - 3} more" if len(unsupported) > 3 else "")
        raise CurloraError(
            f"target modules {', '.join(wanted)} match layers that are neither nn.Linear nor Conv1D: {shown}; "
            "CURLoRA adapts only linear layers: choose other --targets"
        )
    if not found:
        available = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n and _layer_shape(m) is not None}
        )
        raise CurloraError(
            f"target modules {', '.join(wanted)} match no layer of this {model_type or 'model'}; "
            f"its linear layers are named: {', '.join(available) or 'none'}"
        )
    return found


def unmatched_targets(layers: Sequence[dict[str, Any]], targets: Sequence[str]) -> list[str]:
    """The target names that match none of `layers` (PEFT adapts the others and ignores these silently)."""
    names = [layer["name"] for layer in layers]
    return [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in names)]


def _index_ranges(indices: Iterable[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2,5,7-8"."""
    values = sorted(set(indices))
    parts: list[str] = []
    start = prev = None
    for v in values:
        if start is None:
            start = prev = v
        elif v == prev + 1:
            prev = v
        else:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = v
    if start is not None:
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ",".join(parts)


def group_layers(layers: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Layers with the same name up to their numbers and the same shape, as one row each:
    ``{"pattern": "model.layers.*.self_attn.q_proj", "indices": "0-29", "count", "kind", "out", "in"}``."""
    groups: dict[tuple, dict[str, Any]] = {}
    for layer in layers:
        parts = layer["name"].split(".")
        numbers = [int(p) for p in parts if p.isdigit()]
        pattern = ".".join("*" if p.isdigit() else p for p in parts)
        key = (pattern, layer["kind"], layer["out"], layer["in"])
        group = groups.setdefault(
            key,
            {"pattern": pattern, "indices": [], "count": 0, "kind": layer["kind"], "out": layer["out"],
             "in": layer["in"]},
        )  # fmt: skip
        group["count"] += 1
        if len(numbers) == 1:
            group["indices"].append(numbers[0])
    for group in groups.values():
        group["indices"] = _index_ranges(group["indices"])
    return list(groups.values())


# -- saved tensors, parameter counts and exact file sizes ---------------------------------------------------------


def _check_method(method: str) -> str:
    key = str(method).strip().lower()
    if key not in METHODS:
        raise CurloraError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    return key


def _check_rank(r: int) -> int:
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise CurloraError(f"rank must be a positive integer, got {r!r}")
    return r


def adapter_tensors(
    layers: Sequence[dict[str, Any]], method: str, r: int, *, u_dtype: str = "float32"
) -> list[tuple[str, str, tuple[int, ...]]]:
    """``(name, dtype, shape)`` of every tensor in the adapter_model.safetensors that save_pretrained writes.

    CURLoRA per layer: ``curlora_U`` (r × r, `u_dtype`), ``curlora_cols`` and ``curlora_rows`` (r, int64) and
    ``curlora_fingerprint`` (4, int64); C and R are rebuilt from the base weights on load and never saved.
    LoRA per layer: ``lora_A.weight`` (r × in) and ``lora_B.weight`` (out × r), float32.
    """
    method, r = _check_method(method), _check_rank(r)
    if u_dtype not in _ST_DTYPES:
        raise CurloraError(f"unknown u_dtype {u_dtype!r}; choose one of: {', '.join(_ST_DTYPES)}")
    tensors: list[tuple[str, str, tuple[int, ...]]] = []
    for layer in layers:
        prefix = SAVE_PREFIX + layer["name"]
        if method == "curlora":
            tensors += [
                (f"{prefix}.curlora_U", u_dtype, (r, r)),
                (f"{prefix}.curlora_cols", "int64", (r,)),
                (f"{prefix}.curlora_rows", "int64", (r,)),
                (f"{prefix}.curlora_fingerprint", "int64", (_FINGERPRINT_LEN,)),
            ]
        else:
            tensors += [
                (f"{prefix}.lora_A.weight", "float32", (r, layer["in"])),
                (f"{prefix}.lora_B.weight", "float32", (layer["out"], r)),
            ]
    return tensors


def trainable_params(layers: Sequence[dict[str, Any]], method: str, r: int) -> int:
    """Trained parameters: r² per layer for CURLoRA, r·(in + out) per layer for LoRA."""
    method, r = _check_method(method), _check_rank(r)
    if method == "curlora":
        return len(layers) * r * r
    return sum(r * (layer["in"] + layer["out"]) for layer in layers)


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def safetensors_header(
    tensors: Iterable[tuple[str, str, Sequence[int]]], metadata: dict[str, str] | None = PEFT_METADATA
) -> tuple[bytes, int]:
    """The header that ``safetensors.torch.save(tensors, metadata)`` writes, and the size of the data after it.

    Returns ``(prefix, data_bytes)`` where ``prefix`` is the 8-byte little-endian header length followed by the
    JSON header padded with spaces to a multiple of 8, so the file is ``len(prefix) + data_bytes`` bytes.
    Tensors are laid out as safetensors does it: by dtype (I64, F64, F32, I32, BF16, F16), then by name.
    """
    entries = []
    for name, dtype, shape in tensors:
        if dtype not in _ST_DTYPES:
            raise CurloraError(f"tensor {name}: unsupported dtype {dtype!r}; use one of {', '.join(_ST_DTYPES)}")
        st_name, size = _ST_DTYPES[dtype]
        entries.append((name, st_name, [int(d) for d in shape], _numel(shape) * size))
    names = [e[0] for e in entries]
    if len(set(names)) != len(names):
        raise CurloraError("duplicate tensor names in an adapter; each saved tensor needs its own name")
    entries.sort(key=lambda e: (-_ST_ORDER[e[1]], e[0].encode("utf-8")))
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, st_name, shape, nbytes in entries:
        header[name] = {"dtype": st_name, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % _HEADER_ALIGN)
    return struct.pack("<Q", len(text)) + text, offset


def safetensors_size(
    tensors: Iterable[tuple[str, str, Sequence[int]]], metadata: dict[str, str] | None = PEFT_METADATA
) -> int:
    """Exact byte size of the safetensors file holding `tensors` (``(name, dtype, shape)``), without data."""
    prefix, data = safetensors_header(tensors, metadata)
    return len(prefix) + data


def adapter_file_size(layers: Sequence[dict[str, Any]], method: str, r: int, *, u_dtype: str = "float32") -> int:
    """Exact size in bytes of the adapter_model.safetensors that save_pretrained writes for these layers."""
    return safetensors_size(adapter_tensors(layers, method, r, u_dtype=u_dtype))


def rank_table(
    layers: Sequence[dict[str, Any]], ranks: Sequence[int] = DEFAULT_RANKS, total_params: int | None = None
) -> list[dict[str, Any]]:
    """Per rank: trainable parameters and adapter file bytes of CURLoRA and LoRA, and LoRA/CURLoRA ratios."""
    rows = []
    for r in ranks:
        cur_p, lora_p = trainable_params(layers, "curlora", r), trainable_params(layers, "lora", r)
        cur_b, lora_b = adapter_file_size(layers, "curlora", r), adapter_file_size(layers, "lora", r)
        row: dict[str, Any] = {
            "r": r,
            "curlora_params": cur_p,
            "lora_params": lora_p,
            "params_ratio": lora_p / cur_p,
            "curlora_bytes": cur_b,
            "lora_bytes": lora_b,
            "bytes_ratio": lora_b / cur_b,
        }
        if total_params:
            row["curlora_percent"] = 100.0 * cur_p / total_params
            row["lora_percent"] = 100.0 * lora_p / total_params
        rows.append(row)
    return rows


def parse_ranks(ranks: str | Sequence[int] | None) -> list[int]:
    """``"1,2,4"`` or a list -> sorted unique positive ranks; None -> `DEFAULT_RANKS`."""
    if ranks is None:
        return list(DEFAULT_RANKS)
    items = ranks.split(",") if isinstance(ranks, str) else list(ranks)
    out: set[int] = set()
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        try:
            value = int(text)
        except ValueError:
            raise CurloraError(f"ranks must be comma-separated positive integers, got {ranks!r}") from None
        out.add(_check_rank(value))
    if not out:
        raise CurloraError(f"no ranks given in {ranks!r}; pass e.g. 1,2,4,8,16,24")
    return sorted(out)


# -- everything about one model ---------------------------------------------------------------------------------


def _resolve_config_file(path: str | os.PathLike) -> Path:
    file = Path(path).expanduser()
    if file.is_dir():
        if (file / "config.json").is_file():
            return file / "config.json"
        raise CurloraError(f"{file} is a folder without config.json; pass the path of a Hugging Face config.json")
    if not file.is_file():
        raise CurloraError(
            f"config file {file} does not exist; pass the path of a Hugging Face config.json "
            "(or a model name / folder instead of --config)"
        )
    return file


def model_info(
    model: str | os.PathLike | PretrainedConfig | nn.Module | None = None,
    *,
    config_file: str | os.PathLike | None = None,
    targets: str | Sequence[str] | None = None,
    ranks: str | Sequence[int] | None = None,
) -> dict[str, Any]:
    """Architecture, adapted layers and the CURLoRA/LoRA rank table of a model, loading no weights.

    `model`: the built-in ``smollm2-135m``, a local folder, a hub id, a transformers config or a model
    (instantiated models are used as they are, e.g. on meta). `config_file`: a config.json instead of `model`.
    """
    from transformers import PretrainedConfig

    from curlora.models.load import build_on_meta, load_config

    if (model is None) == (config_file is None):
        raise CurloraError("give either a model (name, folder or hub id) or a config.json file, not both or none")
    ranks_list = parse_ranks(ranks)
    if config_file is not None:
        source = str(_resolve_config_file(config_file))
        net = build_on_meta(load_config(source))
    elif isinstance(model, nn.Module):
        source, net = type(model).__name__, model
    elif isinstance(model, PretrainedConfig):
        source, net = f"{type(model).__name__}", build_on_meta(model)
    else:
        source = os.fspath(model)
        net = build_on_meta(load_config(source))
    config = net.config
    arch = architecture(config, net)
    layers = target_layers(net, targets, arch["model_type"])
    wanted = parse_targets(targets)
    from curlora.tuner.config import default_target_modules

    modules = wanted or default_target_modules(arch["model_type"])
    return {
        "source": source,
        "architecture": arch,
        "targets": {
            "modules": modules,
            "default": wanted is None,
            "unmatched": unmatched_targets(layers, modules),
            "count": len(layers),
            "groups": group_layers(layers),
        },
        "ranks": rank_table(layers, ranks_list, arch["total_params"]),
    }
