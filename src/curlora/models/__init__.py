"""Models: loading (load.py), the built-in GGUF model (builtin.py), and what an adapter would cost (info.py)."""

from curlora.models.builtin import BUILTIN_MODEL
from curlora.models.load import build_on_meta, load_config, load_model, parse_dtype, resolve_model

__all__ = ["BUILTIN_MODEL", "build_on_meta", "load_config", "load_model", "parse_dtype", "resolve_model"]
