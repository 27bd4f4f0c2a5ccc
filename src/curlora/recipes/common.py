"""What every recipe shares: the Reporter protocol, device and environment, seeds, the run folder, perplexity.

A recipe (bench, sft, ...) is a class that takes a config and an output folder and writes results.json there;
the CLI hands it a Reporter to show progress. The run folder is claimed only after every input is validated,
so a bad input never leaves a folder behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import shutil
from pathlib import Path

import torch
from torch import nn

from curlora.errors import CurloraError
from curlora.files import atomic_write_json, package_version
from curlora.metrics import perplexity
from curlora.models.load import parse_dtype

log = logging.getLogger(__name__)
CONFIG_FILE = "config.json"


class Reporter:
    """Receives progress; the library never prints. The CLI implements it with rich progress bars or log lines."""

    def bar(self, description: str, total: int) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def end_bar(self) -> None: ...
    def stage(self, summary: dict) -> None: ...
    def note(self, message: str) -> None:
        log.info(message)


def resolve_device(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """`auto` picks CUDA when visible; dtype `auto` is bf16 on CUDA and fp32 on the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CurloraError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if dtype == "auto":
        return dev, (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    return dev, parse_dtype(dtype)


def environment(device: torch.device) -> dict:
    """Versions and device name, recorded in every results.json."""
    import peft
    import transformers

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({os.cpu_count()} cores, {platform.machine()})"
    return {
        "device_name": name,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "curlora": package_version(),
        "python": platform.python_version(),
    }


def derive_seed(*parts) -> int:
    """A 56-bit seed from any parts (e.g. seed, task index, "head"): independent streams, stable across runs."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:7], "little")


# -- the run folder -------------------------------------------------------------------------------------------
def settings_diff(out: Path, mine: dict, *, ignore: tuple[str, ...] = ()) -> list[str] | None:
    """Fields of `mine` that differ from the settings recorded in `out`/config.json; None when there are none
    recorded. Refuses a config.json that is not valid JSON. Nothing is written."""
    cfg_file = out / CONFIG_FILE
    if not cfg_file.exists():
        return None
    try:
        saved = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CurloraError(f"{cfg_file} is not valid JSON; delete the folder or pass --overwrite") from None
    mine = json.loads(json.dumps(mine))  # tuples become lists, as they were saved
    return sorted(k for k in mine if k not in ignore and saved.get(k) != mine[k])


def claim_run_folder(out: Path, settings: dict, *, overwrite: bool) -> None:
    """Start (or continue) a run in `out`: with `overwrite` the old folder goes first; the settings are recorded.
    Call it once every input is validated, on the main process only."""
    if overwrite and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / CONFIG_FILE, settings)


# -- perplexity stage -----------------------------------------------------------------------------------------
def perplexity_stage(
    model: nn.Module,
    ids: torch.Tensor,
    *,
    max_length: int,
    stride: int,
    device: torch.device,
    reporter: Reporter,
    what: str,
) -> dict:
    """Sliding-window perplexity of `ids` with a progress bar (batches of windows on CUDA, one at a time on CPU)."""
    n_windows = max(1, math.ceil(max(0, ids.shape[1] - max_length) / stride) + 1)
    reporter.bar(what, n_windows)
    try:
        return perplexity(
            model,
            input_ids=ids,
            max_length=max_length,
            stride=stride,
            device=device,
            batch_size=8 if device.type == "cuda" else 1,
            progress=lambda n, _total: reporter.advance(n),
        )
    finally:
        reporter.end_bar()
