"""What every recipe shares: the Reporter protocol, device and environment, seeds, the run folder, perplexity.

A recipe (bench, sft, ...) is a class that takes a config and an output folder and writes results.json there;
the CLI hands it a Reporter to show progress. The run folder is claimed only after every input is validated,
so a bad input never leaves a folder behind.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import math
import os
import platform
import re
import shutil
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from torch import nn

from curlora.cur import SAMPLING_STRATEGIES
from curlora.errors import CurloraError
from curlora.files import atomic_write_json, atomic_write_text, package_version
from curlora.metrics import perplexity
from curlora.models.load import parse_device, parse_dtype

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


# -- options checked at the door ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """What one option accepts: an int or a (finite) float within bounds, or one of some words; None allowed only
    when `optional` (it then means "the default")."""

    kind: type = int
    low: float | None = None
    low_open: bool = False  # low itself excluded
    high: float | None = None
    high_open: bool = False
    optional: bool = False
    choices: tuple[str, ...] = ()
    pattern: str = ""  # a regular expression the whole value must match, described to users by `allowed`
    allowed: str = ""

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.pattern:
            return self.allowed
        what = "an integer" if self.kind is int else "a finite number"
        if self.low is not None and self.high is not None:
            bounds = f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        elif self.low is not None:
            bounds = f"{'>' if self.low_open else '>='} {self.low:g}"
        else:
            bounds = ""
        return " ".join(filter(None, [what, bounds]))

    def accepts(self, value) -> bool:
        if value is None:
            return self.optional
        if self.choices:
            return value in self.choices
        if self.pattern:
            return isinstance(value, str) and re.fullmatch(self.pattern, value) is not None
        wanted = int if self.kind is int else int | float
        if isinstance(value, bool) or not isinstance(value, wanted):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))


_POSITIVE = Rule(int, low=1)
_MAYBE_POSITIVE = Rule(int, low=1, optional=True)
#: Every numeric or enumerated option of the recipes, in one place (bench and sft apply the rows for their fields).
OPTIONS: dict[str, Rule] = {
    "epochs": Rule(float, low=0, low_open=True),
    "batch_size": _POSITIVE,
    "eval_batch_size": _POSITIVE,
    "grad_accum": _POSITIVE,
    "max_length": _POSITIVE,
    "max_new_tokens": _POSITIVE,
    "max_steps": _MAYBE_POSITIVE,
    "n_train": _MAYBE_POSITIVE,
    "n_eval": _MAYBE_POSITIVE,
    "train_articles": _MAYBE_POSITIVE,
    "max_train_questions": _MAYBE_POSITIVE,
    "eval_questions": _MAYBE_POSITIVE,
    "eval_articles": Rule(float, low=0, low_open=True),
    "ppl_max_length": _POSITIVE,
    "ppl_stride": _POSITIVE,
    "ppl_max_tokens": _MAYBE_POSITIVE,  # None: the whole text; 0 is a mistake, not "no limit"
    "kl_max_tokens": _MAYBE_POSITIVE,  # None: not measured
    "n_val": Rule(int, low=0),
    "rank": _POSITIVE,
    "lr": Rule(float, low=0, low_open=True, optional=True),
    "head_lr": Rule(float, low=0, low_open=True, optional=True),
    "alpha": Rule(float),
    "warmup_steps": Rule(int, low=0, optional=True),
    "warmup_ratio": Rule(float, low=0, high=1, high_open=True, optional=True),
    "weight_decay": Rule(float, low=0),
    "seed": Rule(int, low=0),
    "save_steps": _POSITIVE,
    "save_total_limit": _MAYBE_POSITIVE,
    "logging_steps": _POSITIVE,
    "sampling": Rule(str, choices=SAMPLING_STRATEGIES),
    "dtype": Rule(str, choices=("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")),
    "device": Rule(str, pattern=r"auto|cpu|mps|(cuda|xpu)(:\d+)?", allowed="auto, cpu, cuda, cuda:N, mps or xpu:N"),
}


def check_options(config) -> None:
    """Check every field of a recipe config that has a row in OPTIONS; one error names the option (as typed on the
    command line), the value and what is allowed. Nothing is written before this passes."""
    for name, rule in OPTIONS.items():
        if not hasattr(config, name):
            continue
        value = getattr(config, name)
        if not rule.accepts(value):
            raise CurloraError(f"--{name.replace('_', '-')} must be {rule.describe()}, got {value!r}")
    seeds = getattr(config, "seeds", [])
    for value in seeds:
        if not OPTIONS["seed"].accepts(value):
            raise CurloraError(f"--seeds must be integers >= 0, got {value!r}")


def resolve_device(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """`auto` picks CUDA when visible; dtype `auto` is bf16 on CUDA and fp32 on the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = parse_device(device, "--device")
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


def claim_run_folder(
    out: Path,
    settings: dict,
    *,
    overwrite: bool,
    reporter: Reporter | None = None,
    ignore: tuple[str, ...] = (),
) -> FileLock:
    """Start (or continue) a run in `out` and return the held lock (release it when the run ends).

    Takes an advisory lock (a second process gets a clear error), re-checks the recorded settings under it, moves an
    old folder away atomically with `overwrite` (a killed --overwrite leaves a `.trash-*` sibling, never a half-
    deleted run), removes leftovers of killed writes and records the settings. Call it once every input is
    validated, on the main process only."""
    lock = lock_run_folder(out)
    try:
        if overwrite and out.exists():
            trash = out.with_name(f".trash-{out.name}-{uuid.uuid4().hex[:8]}")
            os.replace(out, trash)  # atomic: the folder is either the old run or gone
            shutil.rmtree(trash, ignore_errors=True)
        elif not overwrite:
            diff = settings_diff(out, settings, ignore=ignore)
            if diff:
                raise CurloraError(
                    f"{out} holds a run with other settings (differs in: {', '.join(diff)}); "
                    "pass another --out, or --overwrite to start over"
                )
        removed = remove_leftovers(out)
        if removed:
            (reporter or Reporter()).note(
                f"removed {len(removed)} leftover(s) of a killed run: {', '.join(sorted(p.name for p in removed))}"
            )
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / CONFIG_FILE, settings)
    except BaseException:
        lock.release()
        raise
    return lock


def lock_run_folder(out: Path) -> FileLock:
    """An advisory lock on `out` (a sibling `.NAME.lock` file, so that --overwrite can move the folder away); a
    second process gets an error naming the folder and the process that holds it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out.with_name(f".{out.name}.lock")))
    owner = out.with_name(f".{out.name}.lock.owner")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            holder = owner.read_text(encoding="utf-8").strip()
        except OSError:
            holder = "another process"
        raise CurloraError(
            f"{out} is in use by {holder}; wait for that run to finish or pass another --out"
        ) from None
    atomic_write_text(owner, f"process {os.getpid()} on {socket.gethostname()}")
    return lock


def remove_leftovers(out: Path) -> list[Path]:
    """Delete what killed writes leave behind: atomic temp files/folders (`.NAME.*.tmp`, `.NAME.old`) inside `out`
    and `.trash-NAME-*` siblings of an interrupted --overwrite. Returns the paths removed. Call it under the lock."""
    found = list(out.parent.glob(f".trash-{glob.escape(out.name)}-*")) if out.parent.is_dir() else []
    if out.is_dir():
        found += [p for p in out.rglob(".*") if p.name.endswith((".tmp", ".old"))]
    removed = []
    for path in sorted(found, key=lambda p: len(p.parts)):
        if not os.path.lexists(path):
            continue  # inside a folder removed before it
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    if removed:
        log.warning("removed leftovers of a killed run: %s", ", ".join(map(str, removed)))
    return removed


def recorded_diff(recorded: dict | None, mine: dict) -> list[str]:
    """Fields in which the settings recorded in a finished run/stage file differ from `mine` (all of them when the
    file records none: an old or foreign file cannot prove what produced it)."""
    mine = json.loads(json.dumps(mine))
    if not isinstance(recorded, dict):
        return ["settings (not recorded)"]
    return sorted(k for k in set(mine) | set(recorded) if recorded.get(k) != mine.get(k))


def newest_intact_checkpoint(run_dir: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest `checkpoint-N` folder whose files are whole (a kill while the trainer saved leaves a partial one),
    and the newer ones skipped with the reason. Intact: trainer_state.json parses, every safetensors file reads
    through, no other file is empty."""
    from safetensors import SafetensorError, safe_open

    found = []
    for path in Path(run_dir).glob("checkpoint-*"):
        suffix = path.name.removeprefix("checkpoint-")
        if path.is_dir() and suffix.isdigit():
            found.append((int(suffix), path))
    skipped: list[tuple[Path, str]] = []
    for _, path in sorted(found, reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
            for f in path.rglob("*"):
                if f.suffix == ".safetensors":
                    with safe_open(str(f), framework="pt") as st:
                        for key in st.keys():
                            st.get_tensor(key)
                elif f.is_file() and f.stat().st_size == 0:
                    raise ValueError(f"{f.name} is empty")
        except (OSError, ValueError, SafetensorError, RuntimeError) as err:
            skipped.append((path, str(err).splitlines()[0][:120] if str(err) else type(err).__name__))
            continue
        return path, skipped
    return None, skipped


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
