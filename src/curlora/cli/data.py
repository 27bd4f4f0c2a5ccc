"""`curlora data prepare` and `curlora data show`: fetch the built-in data; list a suite's tasks and sizes."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from curlora.cli._ui import console

data_app = typer.Typer(no_args_is_help=True, help="Fetch and inspect the task suites.")


def _counts(train: dict[str, int], evals: dict[str, int]) -> str:
    return "\n".join(f"{escape(name)}: {n:,} / {evals.get(name, 0):,}" for name, n in train.items())


@data_app.command()
def prepare(force: bool = typer.Option(False, help="Extract again (and download again if the file is bad).")) -> None:
    """Fetch the built-in VADER data (vaderSentiment sdist from PyPI, SHA-256 checked) into the cache."""
    from curlora.data import load_builtin_suite, prepare_builtin
    from curlora.data.summary import suite_summary

    folder = prepare_builtin(force=force)
    summary = suite_summary(load_builtin_suite(source_dir=folder))  # reads and splits every file: a full check
    table = Table(title=f"Built-in data in {escape(str(folder))}", title_justify="left")
    table.add_column("file")
    table.add_column("bytes", justify="right")
    for file in sorted(folder.iterdir()):
        if file.is_file():
            table.add_row(escape(file.name), f"{file.stat().st_size:,}")
    console.print(table)
    tasks = ", ".join(f"{t['name']} ({t['train']:,} train / {t['eval']:,} eval)" for t in summary["tasks"])
    console.print(f"[green]✓[/] verified: {escape(tasks)}; perplexity text {summary['perplexity']['name']}")


@data_app.command()
def show(
    suite: str = typer.Option("builtin", help="builtin (VADER, offline) or paper (MRPC → SST-2 → Sentiment140)."),
    data_dir: Path | None = typer.Option(
        None, help="builtin: folder with the VADER *_GroundTruth.txt files; paper: folder in the GLUE layout."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON instead of tables."),
) -> None:
    """The tasks of a suite in training order: kind, labels, split sizes, label counts, notes; the perplexity text."""
    from curlora.data import load_suite
    from curlora.data.summary import suite_summary

    summary = suite_summary(load_suite(suite, data_dir))
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    table = Table(title=f"Suite {escape(summary['suite'])} (tasks in training order)", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("task", style="bold", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("train", justify="right", no_wrap=True)
    table.add_column("eval", justify="right", no_wrap=True)
    table.add_column("labels: train / eval examples")
    for i, task in enumerate(summary["tasks"], start=1):
        table.add_row(
            str(i),
            escape(task["name"]),
            task["kind"],
            f"{task['train']:,}",
            f"{task['eval']:,}",
            _counts(task["train_label_counts"], task["eval_label_counts"]),
        )
    console.print(table)
    for task in summary["tasks"]:
        for note in task["notes"]:
            console.print(f"[bold]{escape(task['name'])}[/]: {escape(note)}")
    ppl = summary["perplexity"]
    console.print(
        f"[bold]perplexity text[/] {escape(ppl['name'])}: {ppl['chars']:,} characters, {ppl['lines']:,} lines, "
        f"{ppl['words']:,} words"
    )
    console.print("[bold]suite notes[/]")
    for note in summary["notes"]:
        console.print(f"  • {escape(note)}")
