"""`curlora bench`: the continual-learning protocol, with progress and a final table."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from curlora.cli._ui import RichReporter, console, csv, ints, quiet_libraries
from curlora.errors import CurloraError


def _method_list(value: str | None) -> list[str] | None:
    """Split --methods on commas, keeping `curlora-16:lr=1e-3,sampling=uniform` (options after ':') together."""
    methods: list[str] = []
    for part in csv(value):
        if methods and ":" in methods[-1] and "=" in part and ":" not in part and "-" not in part.split("=")[0]:
            methods[-1] += "," + part
        else:
            methods.append(part)
    if value is not None and not methods:
        raise CurloraError(f"--methods {value!r} names no method; e.g. --methods curlora-16,lora-16,head_only")
    return methods or None


SUMMARY_COLUMNS = ("Method", "Seeds", "Avg acc", "BWT", "Forgetting", "PPL before", "PPL after", "Trainable params",
                   "Adapter size", "Wall time")


def print_summary(results: dict) -> None:
    """The Table-1-style accuracy table (stages × methods) and the key metrics, narrow enough for a terminal."""
    from curlora.metrics import mean_sd
    from curlora.reports.bench import summary_rows

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
    suite: str = typer.Option(
        "builtin",
        help="builtin (VADER, offline), paper (MRPC → SST-2 → Sentiment140) or continual (MRPC, SST-2, RTE, "
        "domain, Amazon, Sentiment140; needs --data-dir).",
    ),
    task_order: str | None = typer.Option(None, help="Run these tasks of the suite, in this order: mrpc,rte,sst2."),
    data_dir: Path | None = typer.Option(
        None, help="Folder with the paper data (GLUE layout, sentiment140/, wikitext-2/)."
    ),
    methods: str | None = typer.Option(
        None,
        help="Comma-separated: curlora-R, lora-R, head_only, full, probe; options "
        "like curlora-16:lr=1e-3,sampling=uniform or lora-1:targets=v_proj need quotes.",
    ),
    seeds: str | None = typer.Option(None, help="Comma-separated seeds, e.g. 0,1,2."),
    n_train: int | None = typer.Option(None, help="Training records per task (paper: 1000)."),
    n_eval: int | None = typer.Option(None, help="Evaluate on a fixed subset of N records per task (default: all)."),
    n_val: int | None = typer.Option(
        None, help="Carve N validation records per task from its training rows (fixed split), for choosing settings."
    ),
    epochs: int | None = typer.Option(None),
    batch_size: int | None = typer.Option(None),
    eval_batch_size: int | None = typer.Option(None),
    lr: float | None = typer.Option(None, help="Peak learning rate (AdamW, cosine schedule with warmup)."),
    head_lr: float | None = typer.Option(
        None, help="Peak learning rate of the classification heads (default: the method's lr, as in the paper)."
    ),
    warmup_steps: int | None = typer.Option(None),
    max_length: int | None = typer.Option(None, help="Token limit per example."),
    ppl_max_length: int | None = typer.Option(None, help="Perplexity window."),
    ppl_stride: int | None = typer.Option(None, help="Perplexity stride."),
    ppl_max_tokens: int | None = typer.Option(None, help="Score only the first N tokens of the perplexity text."),
    kl_max_tokens: int | None = typer.Option(
        None, help="Also measure KL(base ‖ trained) of the next-token distribution on the first N perplexity tokens."
    ),
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
    from curlora.reports.bench import write_report

    quiet_libraries()

    overrides = dict(
        model=model,
        suite=suite,
        data_dir=str(data_dir) if data_dir else None,
        methods=_method_list(methods),
        seeds=ints(seeds, "--seeds"),
        n_train=n_train,
        n_eval=n_eval,
        n_val=n_val,
        task_order=[t.strip() for t in task_order.split(",") if t.strip()] if task_order else None,
        kl_max_tokens=kl_max_tokens,
        epochs=epochs,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        lr=lr,
        head_lr=head_lr,
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
