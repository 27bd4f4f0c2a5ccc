"""`curlora sweep`: a grid or Optuna search over bench configurations, its Pareto fronts, and `recommend`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from curlora.errors import CurloraError

console = Console()
if not console.is_terminal:  # logs and pipes: full labels on one line rather than rich's 80-column default
    console.width = 160
sweep_app = typer.Typer(no_args_is_help=False, help="Search methods × ranks × learning rates for the best "
                        "accuracy-vs-forgetting trade-off (docs/SWEEP.md).")


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _nums(value: str | None, kind, what: str) -> list | None:
    try:
        return [kind(v) for v in _csv(value)] if value else None
    except ValueError:
        raise CurloraError(f"{what} must be a comma-separated list of {kind.__name__}s, got {value!r}") from None


class LiveReporter:
    """A rich view (runs done / running / left, ETA) in a terminal; one plain line per finished run otherwise."""

    def __init__(self) -> None:
        self.live = console.is_terminal
        self.done = self.total = 0
        self.running: dict[int, str] = {}
        self.t0 = time.perf_counter()
        self.progress = Progress(
            TextColumn("[bold blue]sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("runs · {task.fields[run]}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console, transient=True,
        )
        self.task = None

    def begin(self, total, done) -> None:
        self.total, self.done = total or 0, done
        if self.live:
            self.progress.start()
            self.task = self.progress.add_task("sweep", total=total, completed=done, run="starting")
        else:
            print(f"sweep: {self.total} runs, {done} finished already", flush=True)

    def _update(self) -> None:
        if self.task is not None:
            left = max(0, self.total - self.done - len(self.running))
            self.progress.update(self.task, completed=self.done,
                                 run=f"{len(self.running)} running, {left} left")

    def started(self, worker, label, seed) -> None:
        self.running[worker] = f"{label} seed {seed}"
        self._update()

    def finished(self, worker, label, seed, m, cached) -> None:
        self.running.pop(worker, None)
        self.done += 1
        self._update()
        if cached and self.live:
            return
        fmt = lambda v, f: "—" if v is None else format(v, f)  # noqa: E731
        line = (f"[{self.done}/{self.total}] {'(done before) ' if cached else ''}{label} seed {seed}: "
                f"acc {fmt(m['avg_acc'], '.3f')}, ppl ratio {fmt(m['ppl_ratio'], '.4f')}, "
                f"forgetting {fmt(m['forgetting'], '.3f')}, {fmt(m['wall_s'], '.0f')} s")
        if self.live:
            self.progress.console.print(line, highlight=False)
        else:
            print(line, flush=True)

    def failed(self, worker, label, seed, error) -> None:
        self.running.pop(worker, None)
        msg = f"FAILED {label} seed {seed}: {error.strip().splitlines()[-1]}"
        (self.progress.console.print(msg, style="red") if self.live else print(msg, flush=True))

    def end(self) -> None:
        if self.live:
            self.progress.stop()


def _front_table(results: dict, name: str) -> Table:
    key = "ppl_ratio" if name == "ppl" else "forgetting"
    table = Table(title=f"non-dominated: learning ↑ vs {key.replace('_', ' ')} ↓ (mean ± sd over seeds)")
    for col in ("Configuration", "Learning (pp)", "PPL ratio", "Forgetting", "Trainable"):
        table.add_column(col, justify="left" if col == "Configuration" else "right")
    rows = sorted((r for r in results["configurations"] if r.get(f"front_{name}")),
                  key=lambda r: -(r["learning"]["mean"] or 0))
    for r in rows:
        def f(s, d, scale=1.0):
            return "—" if s["mean"] is None else f"{s['mean'] * scale:.{d}f}" + (
                f" ± {s['sd'] * scale:.{d}f}" if s["sd"] is not None else "")
        table.add_row(r["label"], f(r["learning"], 1, 100), f(r["ppl_ratio"], 4), f(r["forgetting"], 3),
                      "—" if r["trainable_params"]["mean"] is None else f"{r['trainable_params']['mean']:,.0f}")
    return table


@sweep_app.callback(invoke_without_command=True)
def sweep(
    ctx: typer.Context,
    config: Path | None = typer.Option(None, "--config", help="A TOML space file (configs/sweeps/)."),
    methods: str | None = typer.Option(None, help="Bench methods: curlora,lora,head_only (ranks from --ranks) or "
                                       "specs with a rank, e.g. curlora-16,lora-4."),
    ranks: str | None = typer.Option(None, help="Ranks for methods given without one, e.g. 8,16,32."),
    lrs: str | None = typer.Option(None, help="Learning rates: LOW:HIGH:COUNT log-spaced (1e-4:1e-2:5) or a list."),
    alphas: str | None = typer.Option(None, help="α values for adapter methods, e.g. 0.5,1,2."),
    samplings: str | None = typer.Option(None, help="CURLoRA samplings, e.g. inverted,uniform."),
    epochs: str | None = typer.Option(None, help="Epoch counts, e.g. 1,3."),
    seeds: str | None = typer.Option(None, help="Seeds, e.g. 0,1,2 (every configuration runs each)."),
    preset: str | None = typer.Option(None, help="Bench preset: quick or paper."),
    model: str | None = typer.Option(None, help="Built-in smollm2-135m, a local folder or a Hugging Face id."),
    suite: str | None = typer.Option(None, help="builtin or paper."),
    data_dir: Path | None = typer.Option(None, help="Folder with the paper data."),
    n_train: int | None = typer.Option(None, help="Training records per task."),
    n_eval: int | None = typer.Option(None, help="Evaluation records per task."),
    warmup_steps: int | None = typer.Option(None, help="Warm-up steps (keep them below the steps of a task)."),
    out: Path | None = typer.Option(None, help="Sweep folder; rerunning the same command resumes it."),
    jobs: int = typer.Option(1, help="Worker processes (each loads the model once; several share a GPU)."),
    gpus: str | None = typer.Option(None, help="GPU indices, e.g. 0,1: workers go to them round-robin."),
    device: str = typer.Option("auto", help="auto, cpu, cuda (ignored with --gpus)."),
    search: str = typer.Option("grid", help="grid (every point) or optuna (multi-objective, --trials N)."),
    trials: int | None = typer.Option(None, help="Optuna trials (configurations), in total over all workers."),
    storage: str | None = typer.Option(None, help="Optuna storage URL (default: SQLite in the sweep folder); "
                                       "postgresql://... lets several machines share one sweep."),
    sampler: str = typer.Option("tpe", help="Optuna sampler: tpe or nsga2."),
) -> None:
    """Run (or resume) a sweep; `curlora sweep recommend RUN` picks a configuration from it."""
    if ctx.invoked_subcommand is not None:
        return
    from curlora.cli.bench import quiet_libraries
    from curlora.recipes.sweep import Options, failure_message, load_space, make_space, run_sweep
    from curlora.reports.sweep import write_report

    quiet_libraries()
    bench = dict(preset=preset, model=model, suite=suite, data_dir=str(data_dir) if data_dir else None,
                 n_train=n_train, n_eval=n_eval, warmup_steps=warmup_steps)
    axes = dict(ranks=_nums(ranks, int, "--ranks"), lrs=lrs, alphas=_nums(alphas, float, "--alphas"),
                samplings=_csv(samplings), epochs=_nums(epochs, int, "--epochs"), seeds=_nums(seeds, int, "--seeds"))
    from curlora.cli.bench import _method_list

    if config is not None:
        space = load_space(config, methods=_method_list(methods), bench=bench, **axes)
    else:
        space = make_space(_method_list(methods), bench=bench, **axes)
    options = Options(jobs=jobs, gpus=_nums(gpus, int, "--gpus"), device=device, search=search, trials=trials,
                      storage=storage, sampler=sampler)
    base = space.base_config()
    out = out or Path("runs") / f"sweep-{base.preset}-{base.suite}-{Path(base.model).name}"
    n_conf = len(space.configurations())
    console.print(f"[bold]curlora sweep[/] {n_conf} configurations × {len(space.seeds)} seeds "
                  f"({search}{f', {trials} trials' if trials else ''}, {jobs} job(s)) → {out}", highlight=False)
    results = run_sweep(space, out, options, LiveReporter())
    report = write_report(out, results)
    for name in ("ppl", "forgetting"):
        console.print(_front_table(results, name))
    console.print(f"report: {report}")
    problem = failure_message(results)
    if problem:
        raise CurloraError(problem)


@sweep_app.command()
def recommend(
    run: Path = typer.Argument(..., help="A sweep folder (or its results.json)."),
    max_ppl_increase: str | None = typer.Option(None, help="Budget on perplexity after/before, e.g. 5% or 0.05."),
    max_forgetting: str | None = typer.Option(None, help="Budget on average forgetting, e.g. 0.01."),
) -> None:
    """Print the configuration that learns the most within the budget, and how to use it."""
    from curlora.recipes.sweep.recommend import (
        adapter_config,
        bench_command,
        load_sweep_results,
        parse_fraction,
        python_only_options,
    )
    from curlora.recipes.sweep.recommend import (
        recommend as pick,
    )

    budget = dict(max_ppl_increase=parse_fraction(max_ppl_increase, "--max-ppl-increase"),
                  max_forgetting=parse_fraction(max_forgetting, "--max-forgetting"))
    results = load_sweep_results(run)
    choice = pick(results, **budget)
    best = choice["best"]

    def stats(r):
        return (f"learning {r['learning']['mean'] * 100:+.1f} pp"
                + (f" ± {r['learning']['sd'] * 100:.1f}" if r["learning"]["sd"] is not None else "")
                + f", ppl ratio {_m(r['ppl_ratio'], '.4f')}, forgetting {_m(r['forgetting'], '.3f')}, "
                f"{len(r['seeds'])} seed(s)")

    wanted = ", ".join(f"{k.replace('_', ' ')} ≤ {v:g}" for k, v in choice["budget"].items() if v is not None)
    if not choice["met"]:
        raise CurloraError(f"no configuration meets the budget ({wanted}); the closest is {best['label']} "
                           f"({stats(best)}); loosen the budget or widen the space")
    console.print(f"[bold green]best within {wanted}:[/] {best['label']}  ({stats(best)})", highlight=False)
    if choice["alternatives"]:
        console.print("indistinguishable at this power (paired 95% interval includes zero): "
                      + ", ".join(choice["alternatives"]), highlight=False)
    print(bench_command(results, best))
    extra = python_only_options(results)
    if extra:
        console.print(f"also set (no CLI flag; make_config(...)): {extra}", highlight=False)
    peft = adapter_config(Path(run) if Path(run).is_dir() else Path(run).parent, results, best)
    if peft is not None:
        console.print("adapter config the sweep trained with (adapter_config.json):")
        print(json.dumps(peft, indent=2, sort_keys=True))
    sys.stdout.flush()


def _m(stat: dict, fmt: str) -> str:
    return "—" if stat["mean"] is None else format(stat["mean"], fmt)


@sweep_app.command(name="report")
def report_cmd(run: Path = typer.Argument(..., help="A sweep folder.")) -> None:
    """Rewrite report.md and the front plots from a sweep folder's results.json."""
    from curlora.recipes.sweep.recommend import load_sweep_results
    from curlora.reports.sweep import write_report

    results = load_sweep_results(run)
    console.print(f"report: {write_report(run, results)}")
