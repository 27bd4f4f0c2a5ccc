"""The results.json contract of the bench: schema version, file names, loading, validation and merging.

The bench writes results.json (recipes/bench/runner.py), and the CLI and every renderer (reports/bench.py,
reports/study.py) read it through this module only.

results.json, schema version 1 (full description: docs/results-schema.md)
--------------------------------------------------------------------------
Top level (a JSON object):

``schema_version`` (int, required)
    Must be ``1``.
``created`` (str)
    ISO-8601 time the results were written.
``config`` (object)
    Free-form bench config. The report shows its scalar entries and reads ``model``, ``preset`` and
    ``dtype`` for the header.
``environment`` (object)
    ``device_name``, ``torch``, ``transformers``, ``peft``, ``curlora``, ``python`` (strings).
``suite`` (object)
    ``name`` (str), ``tasks`` (list of task names in training order; defines the number of tasks),
    ``ppl_name`` (name of the perplexity text), ``notes`` (list of str); optional ``ppl_tokens``,
    ``ppl_max_length``, ``ppl_stride`` (ints, as returned by :func:`curlora.metrics.perplexity`).
``runs`` (list, required)
    One object per (method configuration, seed):

    ``label`` (str, required)
        Method label; runs with the same label are seeds of one configuration.
    ``acc`` (list of lists, required; ``[]`` before the first evaluation)
        ``acc[i][j]`` = accuracy on task ``j`` after training task ``i``; one row per finished stage,
        ``null`` above the diagonal (rows may also stop at the diagonal). A run with fewer rows than
        ``suite.tasks``, or with ``"complete": false``, is *incomplete* (e.g. interrupted) and is reported
        as such.
    ``complete`` (bool or null)
        Optional; ``false`` marks a run as unfinished even when every stage has a row.
    ``method`` (a name of ``curlora.methods.METHODS``), ``rank`` (int or null),
    ``sampling`` (str or null), ``lr`` (float), ``seed`` (int)
        Describe the run.
    ``ppl_before``, ``ppl_after`` (float or null)
        Perplexity on general text before the first task and after the last one.
    ``delta_norm_ratio`` (``{"mean": float, "max": float}`` or null)
        ``||dW||_F / ||W||_F`` over adapted layers.
    ``trainable_params`` (int), ``head_params`` (int), ``adapter_bytes`` (int or null),
    ``wall_s`` (float), ``peak_lr`` (float)
        Adapter parameter count (classification heads excluded), head parameter count, saved adapter
        file size, run wall time in seconds, largest learning rate the scheduler reached.
    ``stages`` (list of objects)
        Per stage: ``task``, ``train_loss``, ``train_s``, ``eval_s``, ``steps``. Only ``task`` is read
        (for task names when ``suite.tasks`` is absent).

Every field not marked required may be missing or ``null``; the report shows "—" for it. Aggregates are
mean ± sample sd (ddof=1) over the seeds of a label; with one value only the mean is shown. End-of-run
quantities (final average accuracy, BWT, forgetting, perplexity after, ||dW||/||W||, adapter size, wall
time) use complete runs only.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curlora.errors import CurloraError

SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"

# --------------------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------------------


def merge_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine the results of several bench runs of one study (e.g. one process per GPU) into one.

    The parts must share the suite and every setting except the methods and seeds; their runs are concatenated
    (a (label, seed) pair may appear once), in the order given."""
    if not parts:
        raise CurloraError("nothing to merge: give at least one run directory")
    first = parts[0]
    ignored = {"methods", "seeds", "device"}
    base_cfg = {k: v for k, v in first.get("config", {}).items() if k not in ignored}
    runs: list[dict[str, Any]] = []
    seen: set[tuple[str, Any]] = set()
    for k, part in enumerate(parts):
        cfg = {key: v for key, v in part.get("config", {}).items() if key not in ignored}
        diff = sorted(key for key in set(cfg) | set(base_cfg) if cfg.get(key) != base_cfg.get(key))
        if diff:
            raise CurloraError(
                f"part {k} was run with other settings ({', '.join(diff)}); merge runs of one study only"
            )
        if part.get("suite", {}).get("tasks") != first.get("suite", {}).get("tasks"):
            raise CurloraError(f"part {k} has other tasks; merge runs of one suite only")
        for run in part["runs"]:
            key = (run["label"], run.get("seed"))
            if key in seen:
                raise CurloraError(f"{run['label']} seed {run.get('seed')} appears in two parts; merge each run once")
            seen.add(key)
            runs.append(run)
    labels = list(dict.fromkeys(r["label"] for r in runs))
    seeds = sorted({r.get("seed") for r in runs if r.get("seed") is not None})
    config = {**first.get("config", {}), "methods": labels, "seeds": seeds}
    return {**first, "config": config, "runs": runs}


def results_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p if p.suffix == ".json" and not p.is_dir() else p / RESULTS_FILE


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate ``results.json`` from a run directory (or the file's own path)."""
    file = results_path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise CurloraError(
            f"{file} not found: point at a bench run directory that contains {RESULTS_FILE} "
            "(the bench writes it after its first run)."
        ) from err
    except (OSError, UnicodeDecodeError) as err:
        raise CurloraError(f"cannot read {file}: {err}; check the path and its permissions.") from err
    try:
        results = json.loads(text)
    except json.JSONDecodeError as err:
        raise CurloraError(
            f"{file} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}): "
            "the file is damaged or was cut short; re-run the bench to regenerate it."
        ) from err
    validate_results(results, source=str(file))
    return results


def _fail(source: str, problem: str) -> CurloraError:
    return CurloraError(f"{source}: {problem}; fix the file or re-run the bench to regenerate it.")


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass
class RunView:
    index: int
    raw: dict[str, Any]
    label: str
    seed: Any
    acc: list[list[float | None]]  # padded to n_tasks columns, one row per finished stage
    complete: bool

    def num(self, key: str, sub: str | None = None) -> float | None:
        v = self.raw.get(key)
        if sub is not None:
            v = v.get(sub) if isinstance(v, dict) else None
        return float(v) if is_number(v) and math.isfinite(v) else None

    def cell(self, i: int, j: int) -> float | None:
        return self.acc[i][j] if i < len(self.acc) else None


@dataclass
class RunGroup:
    label: str
    runs: list[RunView] = field(default_factory=list)

    @property
    def complete_runs(self) -> list[RunView]:
        return [r for r in self.runs if r.complete]


@dataclass
class Prepared:
    results: dict[str, Any]
    tasks: list[str]
    runs: list[RunView]
    groups: list[RunGroup]


_NUMERIC_RUN_FIELDS = (
    "lr",
    "ppl_before",
    "ppl_after",
    "trainable_params",
    "head_params",
    "adapter_bytes",
    "wall_s",
    "peak_lr",
)


def prepare(results: Any, source: str = "results") -> Prepared:
    if not isinstance(results, dict):
        raise _fail(source, f"the top level must be a JSON object, got {type(results).__name__}")
    version = results.get("schema_version")
    if version != SCHEMA_VERSION:
        raise CurloraError(
            f"{source}: schema_version is {version!r} but this curlora reads version {SCHEMA_VERSION}; "
            "regenerate the results with this curlora version (re-run the bench) or use the curlora "
            "version that wrote them."
        )
    for key in ("config", "environment", "suite"):
        if results.get(key) is not None and not isinstance(results[key], dict):
            raise _fail(source, f"'{key}' must be an object")
    runs_raw = results.get("runs")
    if not isinstance(runs_raw, list):
        raise _fail(source, "'runs' must be a list of run objects")
    suite = results.get("suite") or {}
    tasks = suite.get("tasks")
    if tasks is not None and (not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks)):
        raise _fail(source, "'suite.tasks' must be a list of task names")

    parsed: list[tuple[int, dict[str, Any], list[list[Any]]]] = []
    for k, run in enumerate(runs_raw):
        where = f"runs[{k}]"
        if not isinstance(run, dict):
            raise _fail(source, f"{where} must be an object")
        label = run.get("label")
        if not isinstance(label, str) or not label:
            raise _fail(source, f"{where} has no 'label' (a non-empty string naming the method)")
        where = f"runs[{k}] (label {label!r}, seed {run.get('seed')!r})"
        acc = run.get("acc", [])
        if acc is None:
            acc = []
        if not isinstance(acc, list) or not all(isinstance(row, list) for row in acc):
            raise _fail(source, f"{where}: 'acc' must be a list of rows (lists)")
        for i, row in enumerate(acc):
            if len(row) < i + 1:
                raise _fail(source, f"{where}: acc row {i} has {len(row)} entries, needs at least {i + 1}")
            for j, x in enumerate(row):
                if j <= i and not (is_number(x) and math.isfinite(x)):
                    raise _fail(source, f"{where}: acc[{i}][{j}] is {x!r}, expected a finite number")
                if j > i and x is not None and not (is_number(x) and math.isnan(x)):
                    raise _fail(source, f"{where}: acc[{i}][{j}] is {x!r} above the diagonal, expected null")
        for key in _NUMERIC_RUN_FIELDS:
            v = run.get(key)
            if v is not None and not is_number(v):
                raise _fail(source, f"{where}: '{key}' is {v!r}, expected a number or null")
        dnr = run.get("delta_norm_ratio")
        if dnr is not None and not (
            isinstance(dnr, dict) and all(v is None or is_number(v) for v in dnr.values())
        ):
            raise _fail(source, f'{where}: \'delta_norm_ratio\' must be {{"mean": x, "max": y}} or null')
        if run.get("complete") is not None and not isinstance(run.get("complete"), bool):
            raise _fail(source, f"{where}: 'complete' must be true, false or null")
        stages = run.get("stages")
        if stages is not None and not (isinstance(stages, list) and all(isinstance(s, dict) for s in stages)):
            raise _fail(source, f"{where}: 'stages' must be a list of objects")
        parsed.append((k, run, acc))

    if tasks is None:
        n = max([max([len(acc)] + [len(r) for r in acc]) for _, _, acc in parsed], default=0)
        longest = max((run.get("stages") or [] for _, run, _ in parsed), key=len, default=[])
        tasks = [
            str(longest[i].get("task")) if i < len(longest) and longest[i].get("task") else f"task {i}"
            for i in range(n)
        ]
    n_tasks = len(tasks)

    runs: list[RunView] = []
    groups: dict[str, RunGroup] = {}
    for k, run, acc in parsed:
        if len(acc) > n_tasks or any(len(row) > n_tasks for row in acc):
            raise _fail(
                source,
                f"runs[{k}] (label {run['label']!r}): 'acc' is larger than the {n_tasks} tasks "
                "in suite.tasks",
            )
        padded = [
            [float(x) if j <= i else None for j, x in enumerate(row)] + [None] * (n_tasks - len(row))
            for i, row in enumerate(acc)
        ]
        complete = n_tasks > 0 and len(acc) == n_tasks and run.get("complete", True) is not False
        r = RunView(k, run, run["label"], run.get("seed"), padded, complete=complete)
        runs.append(r)
        groups.setdefault(r.label, RunGroup(r.label)).runs.append(r)
    return Prepared(results, list(tasks), runs, list(groups.values()))


def validate_results(results: Any, source: str = "results") -> None:
    """Raise :class:`CurloraError` (naming ``source``) unless ``results`` follows schema version 1."""
    prepare(results, source)
