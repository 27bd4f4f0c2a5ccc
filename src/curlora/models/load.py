"""Loading causal language models: the built-in SmolLM2-135M (:mod:`curlora.models.builtin`), local folders and
Hugging Face hub ids, with one clear error for each way a load can fail."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from curlora.errors import CurloraError
from curlora.files import looks_like_path
from curlora.models.builtin import BUILTIN_MODEL, ensure_builtin_model, is_builtin, prepare_tokenizer

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

_DTYPES: dict[str, torch.dtype | str] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "auto": "auto",
}



# --------------------------------------------------------------------------------------------------
# Name handling
# --------------------------------------------------------------------------------------------------


def _no_config_error(folder: Path) -> CurloraError:
    return CurloraError(
        f"Model folder {folder} has no config.json, so it is not a Hugging Face model folder. "
        f"Pass a folder written by `save_pretrained` (config.json + weights), a Hugging Face hub id, "
        f"or the built-in model '{BUILTIN_MODEL}'."
    )


def resolve_model(name_or_path: str | os.PathLike) -> str:
    """Turn a model name into something `from_pretrained` can load.

    - the built-in name (``smollm2-135m``, ``smollm2``, ``SmolLM2-135M``) -> its converted cache folder,
      converting it first if needed;
    - an existing local folder -> that folder (it must hold a config.json);
    - anything else that looks like a hub id -> returned unchanged.
    """
    if is_builtin(name_or_path):
        return str(ensure_builtin_model())
    name = os.fspath(name_or_path)
    if not name.strip():
        raise CurloraError(
            f"Empty model name. Pass the built-in '{BUILTIN_MODEL}', a local folder or a hub id."
        )
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise _no_config_error(path)
        return str(path)
    if path.is_file():
        raise CurloraError(
            f"Model path {path} is a file, not a folder. Pass the folder that holds config.json and the "
            f"weights (or the built-in '{BUILTIN_MODEL}')."
        )
    if looks_like_path(name):
        raise CurloraError(
            f"Model folder {path} does not exist. Check the path, or use the built-in model "
            f"'{BUILTIN_MODEL}'."
        )
    return name


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | str:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise CurloraError(f"dtype {dtype} is not a floating-point type. Use float32, bfloat16, float16.")
        return dtype
    key = str(dtype).strip().lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise CurloraError(
            f"Unknown dtype {dtype!r}. Use one of: float32/fp32, bfloat16/bf16, float16/fp16, or auto."
        )
    return _DTYPES[key]


def parse_device(device: str | torch.device | None, option: str = "device") -> torch.device | None:
    """A torch.device that exists here, or one clear error naming `option` (the argument or CLI flag)."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise CurloraError(f"{option} must be auto, cpu, cuda, cuda:N or mps, got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CurloraError(f"{option} {device!r} was asked for but no CUDA GPU is visible; use cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise CurloraError(f"{option} {device!r} was asked for but MPS is not available; use cpu")
    return dev


def _offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, read now (huggingface_hub itself reads them only at import)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}:
            return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except (ImportError, AttributeError):
        return False


def _hub_kwargs(path: str) -> dict[str, Any]:
    """Extra `from_pretrained` arguments: stay off the network for hub ids when offline mode is on."""
    if os.path.isdir(path) or not _offline():
        return {}
    return {"local_files_only": True}


def _load_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean 'could not fetch or read the model'. OSError covers huggingface_hub's own errors,
    connection errors and timeouts; non-OSError HTTP client errors are added when their module is loaded."""
    errors: list[type[BaseException]] = [OSError]
    for module, attr in (("httpx", "HTTPError"), ("httpx2", "HTTPError"), ("requests", "RequestException")):
        err = getattr(sys.modules.get(module), attr, None)
        if isinstance(err, type) and issubclass(err, BaseException):
            errors.append(err)
    return tuple(errors)


def _hub_error(name: str, exc: BaseException) -> CurloraError:
    offline = " (offline mode is on: HF_HUB_OFFLINE)" if _offline() else ""
    return CurloraError(
        f"Model {name!r} could not be loaded from the Hugging Face hub or its local cache{offline}: "
        f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}. "
        f"Fix: use the built-in model '{BUILTIN_MODEL}' (works offline), or pass a local folder that holds "
        f"config.json, weights and tokenizer files (as written by `save_pretrained`)."
    )


def _folder_error(name: str, path: str, exc: BaseException) -> CurloraError:
    hint = (
        f"The converted built-in model looks damaged: delete {path} and it will be converted again."
        if is_builtin(name)
        else "Check that the folder holds config.json, weights (*.safetensors / *.bin) and tokenizer files."
    )
    return CurloraError(f"Could not load the model in {path}: {exc}. {hint}")


def load_model(
    name_or_path: str | os.PathLike = BUILTIN_MODEL,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    quantize: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer.

    `name_or_path`: the built-in ``smollm2-135m`` (default), a local `save_pretrained` folder, or a hub id.
    `dtype`: None means float32; "auto" keeps the checkpoint's own dtype; also "bf16"/"fp16" or a torch.dtype.
    `device`: where to move the model (default: stay on CPU).
    `quantize`: "4bit" (nf4, double quantization, computing in `dtype`) or "8bit" (LLM.int8()) with bitsandbytes;
    see `curlora.models.quantize` for what may be quantized.

    The tokenizer always has a pad token (eos when it had none), pads on the right, and
    ``model.config.pad_token_id`` matches it. The model is returned in eval mode.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = parse_dtype(dtype)
    dev = parse_device(device)
    name = os.fspath(name_or_path)
    path = resolve_model(name)
    is_hub = not os.path.isdir(path)
    extra = _hub_kwargs(path)
    model_extra = dict(extra)
    if extra:
        # transformers 5 does not pass local_files_only on to its PEFT-adapter lookup, which then retries the
        # network for ~20 s; hand it over explicitly.
        model_extra["adapter_kwargs"] = {"local_files_only": True}
    quantize = _quantize_kwargs(quantize, name, path, torch_dtype, dev, extra, model_extra)
    if not is_hub:
        _refuse_pickle_only(Path(path))
    start = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **extra)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, use_safetensors=True, **model_extra)
    except CurloraError:
        raise
    except (*_load_errors(), ValueError, KeyError) as exc:
        raise (_hub_error(name, exc) if is_hub else _folder_error(name, path, exc)) from exc
    prepare_tokenizer(model, tokenizer)
    if dev is not None and not quantize:  # a quantized model is placed by from_pretrained (device_map)
        model = model.to(dev)
    model.eval()
    logger.info("Loaded %s (%s) in %.1f s", name, model.dtype, time.perf_counter() - start)
    return model, tokenizer


def _quantize_kwargs(quantize, name, path, torch_dtype, dev, extra, model_extra) -> str | None:
    """Check a --quantize request before loading anything; add its from_pretrained arguments to `model_extra`."""
    from curlora.models import quantize as q

    choice = q.check_quantize(quantize)
    if choice is None:
        return None
    from transformers import AutoConfig

    q.bitsandbytes_version()
    target = dev or torch.device("cpu")
    q.check_device(choice, target)
    try:
        model_config = AutoConfig.from_pretrained(path, **extra)
    except (*_load_errors(), ValueError, KeyError):
        model_config = None  # from_pretrained below reports an unreadable model with the usual message
    q.check_not_quantized(model_config, name)
    compute = torch_dtype if isinstance(torch_dtype, torch.dtype) else torch.float32
    model_extra["quantization_config"] = q.bitsandbytes_config(choice, compute)
    model_extra["device_map"] = {"": target}
    return choice
def _refuse_pickle_only(folder: Path) -> None:
    """Pickle weights can run code when read: a folder with `.bin`/`.pt` weights and no safetensors is refused."""
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    if pickles:
        raise CurloraError(
            f"{folder} holds only pickle weights ({', '.join(pickles)}), which curlora never loads (unpickling can "
            "run code); convert them where you trust them, with model.save_pretrained(folder, "
            "safe_serialization=True), and pass the folder with model.safetensors"
        )


def load_config(name_or_path_or_config_json: str | os.PathLike) -> PretrainedConfig:
    """A transformers config from a model name / folder / hub id, or from a path to a ``config.json`` file."""
    from transformers import AutoConfig

    name = os.fspath(name_or_path_or_config_json)
    path = Path(name).expanduser()
    if not is_builtin(name) and path.is_file():
        return _config_from_json_file(path)
    resolved = resolve_model(name)
    is_hub = not os.path.isdir(resolved)
    try:
        return AutoConfig.from_pretrained(resolved, **_hub_kwargs(resolved))
    except CurloraError:
        raise
    except (*_load_errors(), ValueError, KeyError) as exc:
        raise (_hub_error(name, exc) if is_hub else _folder_error(name, resolved, exc)) from exc


def _config_from_json_file(path: Path) -> PretrainedConfig:
    from transformers import AutoConfig

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise CurloraError(f"{path} is not a text file ({exc}). Pass a Hugging Face config.json.") from exc
    except json.JSONDecodeError as exc:
        raise CurloraError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}). "
            f"Fix the file or pass a model folder / hub id instead."
        ) from exc
    if not isinstance(data, dict):
        raise CurloraError(
            f"{path} must hold a JSON object (a Hugging Face config.json), not {type(data).__name__}."
        )
    model_type = data.pop("model_type", None)
    if not model_type:
        raise CurloraError(
            f"{path} has no 'model_type' field, so the architecture is unknown. "
            f'Add e.g. "model_type": "llama" to the file.'
        )
    data.pop("transformers_version", None)
    try:
        return AutoConfig.for_model(model_type, **data)
    except ValueError as exc:
        if model_type in str(exc):
            raise CurloraError(
                f"{path}: model_type {model_type!r} is not known to this transformers version ({exc}). "
                f"Fix the model_type or upgrade transformers."
            ) from exc
        raise _bad_field(path, exc) from exc
    except TypeError as exc:
        raise CurloraError(f"{path}: the config fields do not fit model_type {model_type!r}: {exc}.") from exc
    except Exception as exc:  # transformers' strict dataclass validation raises its own type
        raise _bad_field(path, exc) from exc


def _bad_field(path: Path, exc: BaseException) -> CurloraError:
    detail = " ".join(str(exc).split())[:300] or type(exc).__name__
    return CurloraError(f"{path} has a field of the wrong type or value ({detail}); fix the file")


def build_on_meta(config: PretrainedConfig | str | os.PathLike) -> PreTrainedModel:
    """Instantiate the causal LM for `config` on the meta device: shapes and module tree only, no memory.

    `config` may also be anything `load_config` accepts.
    """
    from transformers import AutoModelForCausalLM, PretrainedConfig

    if not isinstance(config, PretrainedConfig):
        config = load_config(config)
    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except ValueError as exc:
        raise CurloraError(
            f"model_type {config.model_type!r} has no causal-LM class in transformers ({exc}). "
            f"Pass a decoder-only (causal LM) config."
        ) from exc
