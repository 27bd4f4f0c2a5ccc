"""The `curlora` command. Each subcommand lives in its own module; this file only assembles them."""

from __future__ import annotations

import logging
import sys

import typer
from rich.console import Console

from curlora.errors import CurloraError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="CURLoRA continual fine-tuning and forgetting benchmarks."
)
console = Console(stderr=True)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug logs.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s")


def run() -> None:
    """Console-script entry point: user mistakes print one clear line, not a traceback."""
    try:
        app()
    except CurloraError as err:
        console.print(f"[bold red]error:[/] {err}")
        sys.exit(2)


from curlora.cli.bench import bench, report  # noqa: E402

app.command()(bench)
app.command()(report)
