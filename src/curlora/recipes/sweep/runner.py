"""Run a sweep: every (configuration, seed) is one bench run in its own folder under the sweep folder.

    SWEEP/sweep.json                      the space (a rerun with another space is refused)
    SWEEP/runs/<configuration>/seed-S/    a bench run folder (config.json, results.json, runs/...)
    SWEEP/base_ppl.json                   the base model's perplexity, measured once and shared by every run
    SWEEP/optuna.db                       Optuna's storage (--search optuna, default)
    SWEEP/results.json                    objectives per configuration and both fronts (written at the end)

The bench resumes each run on its own (finished runs are read back, a half-done run restarts at its next task), so
a killed sweep, rerun, redoes nothing it finished. Workers are spawned processes that load the model once and take
points from a queue; a file lock per run keeps two workers (or two machines) off the same run folder.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import os
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock

from curlora.data import load_suite
from curlora.errors import CurloraError
from curlora.files import atomic_write_json, safe_name
from curlora.models.load import load_model
from curlora.recipes.bench import Bench
from curlora.recipes.common import resolve_device
from curlora.recipes.sweep.objectives import run_metrics, summarize
from curlora.recipes.sweep.space import Configuration, Space
from curlora.reports.results import RESULTS_FILE as BENCH_RESULTS

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
SWEEP_FILE = "sweep.json"
RESULTS_FILE = "results.json"


class SweepReporter:
    """Receives the sweep's events; the library never prints (the CLI shows a rich view or plain lines)."""

    def begin(self, total: int | None, done: int) -> None: ...
    def started(self, worker: int, label: str, seed: int) -> None: ...
    def finished(self, worker: int, label: str, seed: int, metrics: dict, cached: bool) -> None:
        log.info("done %s seed %s", label, seed)

    def failed(self, worker: int, label: str, seed: int, error: str) -> None:
        log.error("failed %s seed %s: %s", label, seed, error)

    def end(self) -> None: ...


@dataclass
class Options:
    jobs: int = 1
    gpus: list[int] | None = None
    device: str = "auto"
    search: str = "grid"
    trials: int | None = None
    storage: str | None = None
    sampler: str = "tpe"
    loader: Callable | None = None  # (base BenchConfig) -> (model, tokenizer, suite); module-level for jobs > 1
    extra: dict = field(default_factory=dict)


# -- folder -----------------------------------------------------------------------------------------------------
def run_dir(out: Path, label: str, seed: int) -> Path:
    return out / "runs" / safe_name(label) / f"seed-{seed}"


def read_bench(out: Path, conf: Configuration, seed: int) -> dict | None:
    """The bench results of one point as written, or None (not run yet, or unreadable: it is run again)."""
    path = run_dir(out, conf.label, seed) / BENCH_RESULTS
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def finished_record(results: dict, conf: Configuration) -> dict | None:
    """The finished record of `conf` in one point's bench results, or None (killed part-way)."""
    done = [r for r in results.get("runs", []) if r.get("label") == conf.spec and r.get("complete")]
    return done[0] if done else None


def read_run(out: Path, conf: Configuration, seed: int) -> dict | None:
    """The finished bench record of one point, or None (not run, or killed part-way)."""
    results = read_bench(out, conf, seed)
    return None if results is None else finished_record(results, conf)


def _record(space: Space, options: Options) -> dict:
    return {"space": space.record(), "search": options.search}


def _differences(mine: dict, theirs: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(mine) | set(theirs)):
        a, b = mine.get(key), theirs.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {b!r} there, {a!r} now")
    return out


def check_folder(out: Path, space: Space, options: Options) -> None:
    """Refuse a folder that holds another space's sweep (naming the difference) or something else entirely."""
    mine = json.loads(json.dumps(_record(space, options)))
    path = out / SWEEP_FILE
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise CurloraError(f"{path} is not valid JSON; delete the folder or pick another --out") from None
        theirs = {k: saved.get(k) for k in mine}
        diff = _differences(mine, theirs)
        if diff:
            raise CurloraError(
                f"{out} holds a sweep of another space ({'; '.join(diff)}); results are never mixed: "
                "pass another --out, or rerun with the same space to resume"
            )
    elif out.exists() and any(out.iterdir()):
        raise CurloraError(f"{out} exists and is not a sweep folder (no {SWEEP_FILE}); pass another --out")


def _check_options(options: Options) -> None:
    if options.jobs < 1:
        raise CurloraError(f"--jobs must be >= 1, got {options.jobs}")
    if options.search not in ("grid", "optuna"):
        raise CurloraError(f"unknown search {options.search!r}; use grid or optuna")
    if options.search == "optuna":
        if not options.trials or options.trials < 1:
            raise CurloraError("--search optuna needs --trials N (N >= 1)")
        if options.sampler not in ("tpe", "nsga2"):
            raise CurloraError(f"unknown sampler {options.sampler!r}; use tpe or nsga2")
    elif options.trials is not None or options.storage is not None:
        raise CurloraError("--trials and --storage apply to --search optuna only")
    if options.gpus is not None and (not options.gpus or any(g < 0 for g in options.gpus)):
        raise CurloraError(f"--gpus must list GPU indices like 0,1; got {options.gpus}")


# -- one point --------------------------------------------------------------------------------------------------
@dataclass
class _Context:
    """What a worker holds for its whole life: the space, the folder and the model loaded once."""

    space: Space
    out: Path
    device: str
    model: object
    tokenizer: object
    suite: object


def _load(space: Space, loader: Callable | None, device: str = "auto"):
    if loader is not None:
        return loader(space.base_config())

    config = space.base_config()
    if config.quantize:  # bitsandbytes quantizes while loading onto the worker's GPU, in the compute dtype
        dev, dtype = resolve_device(device, config.dtype)
        model, tokenizer = load_model(config.model, quantize=config.quantize, dtype=dtype, device=dev)
    else:
        model, tokenizer = load_model(config.model)
    return model, tokenizer, load_suite(config.suite, config.data_dir)


def run_point(ctx: _Context, conf: Configuration, seed: int) -> tuple[dict, bool]:
    """Run (or read back) one bench run; returns (its record, whether it was finished already)."""


    folder = run_dir(ctx.out, conf.label, seed)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        record = read_run(ctx.out, conf, seed)
        if record is not None:
            return record, True
        bench = Bench(ctx.space.bench_config(conf, seed, ctx.device), folder, model=ctx.model,
                      tokenizer=ctx.tokenizer, suite=ctx.suite)
        shared = ctx.out / "base_ppl.json"
        if shared.exists() and not (folder / "base_ppl.json").exists():
            shutil.copyfile(shared, folder / "base_ppl.json")  # the same model, text and window for every run
        results = bench.run()
        if not shared.exists():
            atomic_write_json(shared, json.loads((folder / "base_ppl.json").read_text()))
    (record,) = [r for r in results["runs"] if r["label"] == conf.spec]
    return record, False


def _emit(events, *event) -> None:
    if events is not None:
        events.put(event)


def _do(ctx: _Context, conf: Configuration, seed: int, wid: int, events, reporter: SweepReporter | None):
    if reporter is not None:
        reporter.started(wid, conf.label, seed)
    _emit(events, "started", wid, conf.label, seed)
    record, cached = run_point(ctx, conf, seed)
    metrics = run_metrics(record)
    if reporter is not None:
        reporter.finished(wid, conf.label, seed, metrics, cached)
    _emit(events, "finished", wid, conf.label, seed, metrics, cached)
    return record



# -- grid -------------------------------------------------------------------------------------------------------
def _grid(space: Space, out: Path, options: Options, reporter: SweepReporter, failures: list) -> None:
    from curlora.recipes.sweep.workers import device_of, pump, spawn

    confs = space.configurations()
    # the reference first: every other configuration's learning is measured against it
    points = [(c, s) for c in sorted(confs, key=lambda c: not c.reference) for s in space.seeds]
    todo = [(c, s) for c, s in points if read_run(out, c, s) is None]
    reporter.begin(len(points), len(points) - len(todo))
    if not todo:
        return
    if options.jobs == 1:
        device, env = device_of(options, 0)
        if env:
            os.environ.update(env)
        model, tokenizer, suite = _load(space, options.loader, device)
        ctx = _Context(space, out, device, model, tokenizer, suite)
        for conf, seed in todo:
            try:
                _do(ctx, conf, seed, 0, None, reporter)
            except Exception:  # as with workers: one failed run must not stop the others
                failures.append((conf.label, seed, traceback.format_exc(limit=6)))
                reporter.failed(0, conf.label, seed, failures[-1][2])
        return
    ctx = mp.get_context("spawn")
    tasks, events = ctx.Queue(), ctx.Queue()
    for conf, seed in todo:
        tasks.put((conf.label, seed))
    n = min(options.jobs, len(todo))  # no worker loads a model only to find the queue empty
    for _ in range(n):
        tasks.put(None)
    procs, _ready = spawn(space, out, options, tasks, events, n)
    pump(procs, events, reporter, failures)


# -- whole sweep ------------------------------------------------------------------------------------------------
def _runs_of(out: Path, confs: list[Configuration], seeds: list[int]) -> dict[str, dict[int, dict]]:
    runs: dict[str, dict[int, dict]] = {}
    for conf in confs:
        for seed in seeds:
            record = read_run(out, conf, seed)
            if record is not None:
                runs.setdefault(conf.label, {})[seed] = {**run_metrics(record), "_record": record}
    return runs


def collect(space: Space, out: Path, options_record: dict, wall_s: float | None) -> dict:
    """results.json of the sweep from what the run folders hold (finished runs only)."""
    confs = space.configurations()
    runs = _runs_of(out, confs, space.seeds)
    rows = summarize([c.as_dict() for c in confs], runs)
    rows = [r for r in rows if r["seeds"]]  # a configuration Optuna never sampled has no row
    base = space.base_config()
    run_list = []
    for label, by_seed in runs.items():
        for seed, m in sorted(by_seed.items()):
            record = m.pop("_record")
            run_list.append({"label": label, **m, "stages": len(record.get("stages", [])),
                             "run_dir": str(run_dir(out, label, seed).relative_to(out))})
    suite_info = _suite_info(out, confs, space.seeds)
    return sanitize({
        "schema_version": SCHEMA_VERSION,
        "kind": "sweep",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "space": space.record(),
        "bench": base.result_key() | {"methods": None, "seeds": space.seeds},
        "search": options_record,
        "suite": suite_info,
        "reference": next(c.label for c in confs if c.reference),
        "noise_rule": "paired 95% t interval over shared seeds must exclude zero (one shared seed: sign)",
        "n_configurations": len(confs),
        "n_runs_expected": len(confs) * len(space.seeds) if options_record.get("search") == "grid" else None,
        "n_runs_done": len(run_list),
        "wall_s": wall_s,
        "run_wall_s_total": sum(r["wall_s"] or 0.0 for r in run_list),
        "configurations": rows,
        "fronts": {name: [r["label"] for r in rows if r.get(f"front_{name}")] for name in ("ppl", "forgetting")},
        "runs": run_list,
    })


def _suite_info(out: Path, confs: list[Configuration], seeds: list[int]) -> dict | None:
    for conf in confs:
        for seed in seeds:
            try:
                res = json.loads((run_dir(out, conf.label, seed) / BENCH_RESULTS).read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                continue
            return {k: res["suite"].get(k) for k in ("name", "tasks", "ppl_name")} | {
                "environment": res.get("environment")}
    return None


def sanitize(obj):
    """NaN/inf become null (results files are valid JSON); tuples become lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [sanitize(v) for v in obj]
    return obj


def run_sweep(space: Space, out: str | Path, options: Options | None = None,
              reporter: SweepReporter | None = None) -> dict:
    """Run (or resume) the sweep and write SWEEP/results.json; returns it. Raises CurloraError before writing
    anything when an input is bad; runs that fail are listed in results["failures"] (see failure_message)."""
    options = options or Options()
    reporter = reporter or SweepReporter()
    out = Path(out)
    _check_options(options)
    check_folder(out, space, options)
    if options.search == "optuna":
        from curlora.recipes.sweep.search_optuna import default_storage, open_storage, require_optuna, run_optuna

        require_optuna()
    if options.search == "optuna" and options.storage is not None:
        open_storage(options.storage, heartbeat=False)  # a bad URL fails before the folder exists
    out.mkdir(parents=True, exist_ok=True)
    record = _record(space, options)
    if not (out / SWEEP_FILE).exists():
        atomic_write_json(out / SWEEP_FILE, record | {"created": datetime.now(timezone.utc).isoformat(
            timespec="seconds")})
    if options.search == "optuna" and options.storage is None:
        options.storage = default_storage(out)
    failures: list = []
    t0 = time.perf_counter()
    try:
        (run_optuna if options.search == "optuna" else _grid)(space, out, options, reporter, failures)
    finally:
        reporter.end()
    search = {"search": options.search, "jobs": options.jobs, "gpus": options.gpus}
    if options.search == "optuna":
        search |= {"trials": options.trials, "sampler": options.sampler, "storage": _redact(options.storage),
                   "study": "curlora-sweep"}
    results = collect(space, out, search, time.perf_counter() - t0)
    results["failures"] = [{"label": f[0], "seed": f[1], "error": f[2]} for f in failures]
    atomic_write_json(out / RESULTS_FILE, results)
    return results


def failure_message(results: dict) -> str | None:
    """One line about the runs that failed (None when none did); their tracebacks are in results.json."""
    failures = results.get("failures") or []
    if not failures:
        return None
    first = failures[0]
    return (f"{len(failures)} run(s) failed (first: {first['label']} seed {first['seed']}: "
            f"{first['error'].strip().splitlines()[-1]}); the finished runs are kept — rerun the sweep to retry them")


def _redact(url: str | None) -> str | None:
    """A storage URL without its password (results.json is shared)."""
    if url is None or "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    return f"{scheme}://{creds.split(':')[0]}:***@{host}"
