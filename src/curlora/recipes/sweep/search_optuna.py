"""`--search optuna`: Optuna's multi-objective search over the sweep's space, its storage the sweep's record."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

from curlora.errors import CurloraError
from curlora.recipes.sweep.objectives import summarize
from curlora.recipes.sweep.runner import Options, SweepReporter, _Context, _do, _load, _runs_of
from curlora.recipes.sweep.space import Configuration, Space
from curlora.recipes.sweep.workers import device_of, pump, spawn

STUDY_NAME = "curlora-sweep"
DIRECTIONS = ("maximize", "minimize", "minimize")  # learning, perplexity ratio, forgetting

def require_optuna() -> None:
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise CurloraError("--search optuna needs Optuna: pip install 'curlora[sweep]'") from None


def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'optuna.db').resolve()}"


def open_storage(url: str, heartbeat: bool = True):
    """Optuna's RDB storage for `url`; a stale running trial (its process killed) is failed and retried."""
    try:
        import optuna
        from optuna.storages import RDBStorage, RetryFailedTrialCallback
    except ImportError:
        raise CurloraError("--search optuna needs Optuna: pip install optuna") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kwargs = {"engine_kwargs": {"connect_args": {"timeout": 60}}} if url.startswith("sqlite") else {}
    if heartbeat:
        kwargs |= {"heartbeat_interval": 20, "grace_period": 60,
                   "failed_trial_callback": RetryFailedTrialCallback(max_retry=3)}
    try:
        return RDBStorage(url, **kwargs)
    except Exception as err:  # driver missing, host unreachable, unwritable file: all the same to the user
        raise CurloraError(
            f"cannot open the Optuna storage {url!r}: {type(err).__name__}: {str(err).splitlines()[0][:200]}; "
            "check the URL (e.g. sqlite:///sweep.db, postgresql://user:pass@host/db) and that its driver is installed"
        ) from None


def _axes(confs: list[Configuration]) -> dict:
    """Optuna's view of the space: a `family` (method + rank) and, per family, the values of lr, α, sampling and
    epochs it takes. A parameter gets the family in its name when its choices differ between families (Optuna
    requires one distribution per name)."""
    families: dict[str, list[Configuration]] = {}
    for c in confs:
        families.setdefault(c.method + (f"-{c.rank}" if c.rank is not None else ""), []).append(c)
    axes = {}
    for fam, members in families.items():
        axes[fam] = {k: sorted({getattr(c, k) for c in members}, key=lambda v: (v is None, str(v) if
                                                                                   isinstance(v, str) else v))
                     for k in ("lr", "alpha", "sampling", "epochs")}
    return axes


def suggest(trial, confs: list[Configuration]) -> Configuration:
    axes = _axes(confs)
    fam = trial.suggest_categorical("family", list(axes))
    chosen = {}
    for key in ("lr", "alpha", "sampling", "epochs"):
        choices = axes[fam][key]
        if len(choices) == 1:
            chosen[key] = choices[0]
            continue
        shared = all(a[key] == choices for a in axes.values())
        chosen[key] = trial.suggest_categorical(key if shared else f"{key}|{fam}", choices)
    fam_confs = [c for c in confs if c.method + (f"-{c.rank}" if c.rank is not None else "") == fam]
    return next(c for c in fam_confs if all(getattr(c, k) == v for k, v in chosen.items()))


def _sampler(options: Options):
    import optuna

    seed = options.extra.get("sampler_seed", 0)
    if options.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, options.trials)))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, options.trials // 3)))


def _load_study(options: Options, storage):
    import optuna

    return optuna.create_study(study_name=STUDY_NAME, storage=storage, directions=list(DIRECTIONS),
                               sampler=_sampler(options), load_if_exists=True)


def optuna_loop(ctx: _Context, options: Options, wid: int, events, reporter) -> None:
    """Take trials until the study holds `trials` finished or running ones (a killed trial is retried)."""
    import optuna

    confs = [c for c in ctx.space.configurations() if not c.reference]
    ref = next(c for c in ctx.space.configurations() if c.reference)
    for seed in ctx.space.seeds:  # the reference first; its file locks make other workers wait for it
        _do(ctx, ref, seed, wid, events, reporter)
    study = _load_study(options, open_storage(options.storage))
    alive = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)

    def objective(trial) -> tuple[float, float, float]:
        conf = suggest(trial, confs)
        trial.set_user_attr("label", conf.label)
        for seed in ctx.space.seeds:
            _do(ctx, conf, seed, wid, events, reporter)
        rows = summarize([c.as_dict() for c in (ref, conf)], _runs_of(ctx.out, [ref, conf], ctx.space.seeds))
        row = rows[1]
        values = (row["learning"]["mean"], row["ppl_ratio"]["mean"], row["forgetting"]["mean"])
        # a diverged run (perplexity null) or a single task (no forgetting) has no objective value: a failed trial
        return tuple(float("nan") if v is None else v for v in values)

    failed = optuna.trial.TrialState.FAIL
    while len(study.get_trials(deepcopy=False, states=alive)) < options.trials:
        if len(study.get_trials(deepcopy=False, states=(failed,))) >= options.trials:
            raise CurloraError(f"{options.trials} trials failed; see the log of the first one and fix its cause")
        study.optimize(objective, n_trials=1, catch=(Exception,))


def run_optuna(space: Space, out: Path, options: Options, reporter: SweepReporter, failures: list) -> None:
    _load_study(options, open_storage(options.storage, heartbeat=False))  # created once, before workers race
    reporter.begin((options.trials + 1) * len(space.seeds), 0)  # the reference's runs, then each trial's
    if options.jobs == 1:
        device, env = device_of(options, 0)
        os.environ.update(env)
        model, tokenizer, suite = _load(space, options.loader, device)
        optuna_loop(_Context(space, out, device, model, tokenizer, suite), options, 0, None, reporter)
        return
    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    procs, _ready = spawn(space, out, options, None, events, options.jobs)
    pump(procs, events, reporter, failures)
