"""`curlora bench` and `curlora report`: the continual-learning protocol, with rich progress and a final table."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from curlora.errors import CurloraError

console = Console()


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _method_list(value: str | None) -> list[str] | None:
    """Split --methods on commas, keeping `curlora-16:lr=1e-3,sampling=uniform` (options after ':') together."""
    methods: list[str] = []
    for part in _csv(value) or []:
        if methods and ":" in methods[-1] and "=" in part and ":" not in part and "-" not in part.split("=")[0]:
            methods[-1] += "," + part
        else:
            methods.append(part)
    return methods or None


def _ints(value: str | None, what: str) -> list[int] | None:
    try:
        return [int(v) for v in _csv(value)] if value else None
    except ValueError:
        raise CurloraError(f"{what} must be comma-separated integers, got {value!r}") from None


class RichReporter:
    """Progress bars with ETA for every training/eval loop and a one-screen summary after each stage."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold blue]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.task_id = None

    def bar(self, description: str, total: int) -> None:
        self.progress.start()
        self.task_id = self.progress.add_task(description, total=total)

    def advance(self, n: int = 1) -> None:
        if self.task_id is not None:
            self.progress.advance(self.task_id, n)

    def end_bar(self) -> None:
        if self.task_id is not None:
            self.progress.remove_task(self.task_id)
            self.task_id = None

    def stage(self, s: dict) -> None:
        accs = "  ".join(f"{t}={a:.3f}" for t, a in zip(s["tasks"], s["acc"], strict=True))
        console.print(
            f"[green]✓[/] {s['label']} seed {s['seed']} after [bold]{s['task']}[/]: {accs}  "
            f"(loss {s['train_loss']:.3f}, {s['steps']} steps, peak lr {s['peak_lr']:.2e}, "
            f"train {s['train_s']:.0f}s, eval {s['eval_s']:.0f}s)"
        )

    def note(self, message: str) -> None:
        console.print(f"[dim]{message}[/]")

    def close(self) -> None:
        self.progress.stop()


def quiet_libraries() -> None:
    """Our own progress bars say what runs; transformers' loading bars and deprecation notices add only noise."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)


SUMMARY_COLUMNS = ("Method", "Seeds", "Avg acc", "BWT", "Forgetting", "PPL before", "PPL after", "Trainable params",
                   "Adapter size", "Wall time")


def print_summary(results: dict) -> None:
    """The Table-1-style accuracy table (stages × methods) and the key metrics, narrow enough for a terminal."""
    from curlora.metrics import mean_sd
    from curlora.report import summary_rows

    rows = summary_rows(results)
    if not rows:
        return
    labels = [row["label"] for row in rows]
    tasks = results.get("suite", {}).get("tasks") or []
    stages = Table(title="accuracy after each stage (mean over seeds)")
    stages.add_column("after: task")
    for label in labels:
        stages.add_column(label, justify="right")
    for i, after in enumerate(tasks):
        for j, task in enumerate(tasks[: i + 1]):
            cells = []
            for label in labels:
                vals = [r["acc"][i][j] for r in results["runs"] if r["label"] == label and len(r["acc"]) > i]
                mean, _ = mean_sd(vals)
                cells.append("—" if mean is None else f"{mean:.3f}")
            stages.add_row(f"{after}: {task}", *cells)
    console.print(stages)
    metrics = Table(title="metrics (mean ± sd over seeds; full table in report.md)")
    columns = [c for c in SUMMARY_COLUMNS if c in rows[0]["text"]]
    for key in columns:
        metrics.add_column(key, justify="left" if key == "Method" else "right")
    for row in rows:
        metrics.add_row(*(str(row["text"][c]) for c in columns))
    console.print(metrics)


def bench(
    preset: str = typer.Option("quick", help="quick (laptop CPU demo) or paper (the paper's §6.4 settings)."),
    model: str = typer.Option("smollm2-135m", help="Built-in smollm2-135m, a local folder or a Hugging Face id."),
    suite: str = typer.Option("builtin", help="builtin (VADER, offline) or paper (MRPC → SST-2 → Sentiment140)."),
    data_dir: Path | None = typer.Option(
        None, help="Folder with the paper data (GLUE layout, sentiment140/, wikitext-2/)."
    ),
    methods: str | None = typer.Option(
        None,
        help="Comma-separated: curlora-R, lora-R, head_only, full; options "
        "like curlora-16:lr=1e-3,sampling=uniform need quotes.",
    ),
    seeds: str | None = typer.Option(None, help="Comma-separated seeds, e.g. 0,1,2."),
    n_train: int | None = typer.Option(None, help="Training records per task (paper: 1000)."),
    n_eval: int | None = typer.Option(None, help="Evaluate on a fixed subset of N records per task (default: all)."),
    epochs: int | None = typer.Option(None),
    batch_size: int | None = typer.Option(None),
    eval_batch_size: int | None = typer.Option(None),
    lr: float | None = typer.Option(None, help="Peak learning rate (AdamW, cosine schedule with warmup)."),
    warmup_steps: int | None = typer.Option(None),
    max_length: int | None = typer.Option(None, help="Token limit per example."),
    ppl_max_length: int | None = typer.Option(None, help="Perplexity window."),
    ppl_stride: int | None = typer.Option(None, help="Perplexity stride."),
    ppl_max_tokens: int | None = typer.Option(None, help="Score only the first N tokens of the perplexity text."),
    sampling: str | None = typer.Option(
        None, help="CURLoRA selection: inverted, reference, standard, uniform, lowest, highest."
    ),
    alpha: float | None = typer.Option(None),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1, ..."),
    dtype: str = typer.Option("auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16."),
    quantize: str | None = typer.Option(None, help="4bit (nf4, QLoRA) or 8bit (LLM.int8()) base; needs bitsandbytes."),
    out: Path | None = typer.Option(None, help="Run folder; rerunning the same command resumes it."),
    overwrite: bool = typer.Option(False, help="Start over in an existing run folder."),
) -> None:
    """Train one model through a task sequence with each method and measure how much it forgets."""
    from curlora.distributed import is_main_process
    from curlora.recipes.bench import Bench, make_config
    from curlora.report import write_report

    quiet_libraries()

    overrides = dict(
        model=model,
        suite=suite,
        data_dir=str(data_dir) if data_dir else None,
        methods=_method_list(methods),
        seeds=_ints(seeds, "--seeds"),
        n_train=n_train,
        n_eval=n_eval,
        epochs=epochs,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        lr=lr,
        warmup_steps=warmup_steps,
        max_length=max_length,
        ppl_max_length=ppl_max_length,
        ppl_stride=ppl_stride,
        ppl_max_tokens=ppl_max_tokens,
        sampling=sampling,
        alpha=alpha,
        device=device,
        dtype=dtype,
        quantize=quantize,
    )
    if warmup_steps is not None:
        overrides["warmup_ratio"] = 0.0
    config = make_config(preset, **overrides)
    out = out or Path("runs") / f"{config.preset}-{config.suite}-{Path(config.model).name}"
    main = is_main_process()  # under accelerate launch / torchrun, rank 0 alone prints and writes the report
    if main:
        console.print(
            f"[bold]curlora bench[/] preset={config.preset} suite={config.suite} model={config.model} "
            f"methods={','.join(config.methods)} seeds={config.seeds} → {out}"
        )
    reporter = RichReporter() if main else None
    try:
        runner = Bench(config, out, reporter=reporter, overwrite=overwrite)
        results = runner.run()
    finally:
        if reporter is not None:
            reporter.close()
    if not main:
        return
    report = write_report(out)
    print_summary(results)
    console.print(f"report: {report}")


def report(run_dir: Path = typer.Argument(..., help="A run folder holding results.json.")) -> None:
    """Regenerate report.md and the plots from a run folder's results.json."""
    from curlora.report import write_report

    path = write_report(run_dir)
    import json

    print_summary(json.loads((run_dir / "results.json").read_text()))
    console.print(f"report: {path}")


def merge(
    run_dirs: list[Path] = typer.Argument(..., help="Run folders of one study (e.g. one per GPU)."),
    out: Path = typer.Option(..., help="Folder for the merged results.json, report.md and plots."),
) -> None:
    """Merge the results of several bench runs of one study and write one report."""
    from curlora.io import atomic_write_json
    from curlora.report import RESULTS_FILE, load_results, merge_results, write_report

    merged = merge_results([load_results(d) for d in run_dirs])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / RESULTS_FILE, merged)
    path = write_report(out)
    print_summary(merged)
    console.print(f"merged {len(merged['runs'])} runs → {path}")


def study_report(
    study_dir: Path = typer.Argument(..., help="Folder with results.json, groups.json and findings.md."),
    out: Path = typer.Option(Path("docs/REPORT.md"), help="The Markdown file to write."),
) -> None:
    """Write one study report (several method groups, their tables and plots) from a merged results.json."""
    from curlora.recipes.study import write_study_report

    console.print(f"report: {write_study_report(study_dir, out)}")
