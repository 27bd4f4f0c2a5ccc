"""The `curlora` command. Each subcommand lives in its own module; this file only assembles them.

Imports of the recipes and of torch-heavy modules are deferred into the command functions: `curlora --help`
and a mistyped option answer at once instead of after seconds of importing torch and transformers.
"""

from __future__ import annotations

import logging
import sys

import typer
from typer.core import TyperGroup

from curlora.cli._ui import print_error
from curlora.errors import CurloraError


class _Group(TyperGroup):
    """Turns a CurloraError raised by any command into one red line and exit code 2.

    Handled here, inside Click's invocation, so it works however the app is started: the console script
    (`app()` or `run()`), `python -m curlora`, and `typer.testing.CliRunner`. Typer itself would re-raise the
    exception and show a traceback.
    """

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CurloraError as err:
            print_error(err)
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    help="CURLoRA continual fine-tuning and forgetting benchmarks.",
)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug logs.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s")


def run() -> None:
    """Console-script entry point: user mistakes print one clear line, not a traceback."""
    try:
        app()
    except CurloraError as err:  # raised outside a command (e.g. while parsing); commands are handled by _Group
        print_error(err)
        sys.exit(2)


from curlora.cli.bench import bench  # noqa: E402
from curlora.cli.data import data_app  # noqa: E402
from curlora.cli.export import export_lora  # noqa: E402
from curlora.cli.info import info  # noqa: E402
from curlora.cli.merge import merge  # noqa: E402
from curlora.cli.report import report  # noqa: E402
from curlora.cli.sft import sft  # noqa: E402
from curlora.cli.study import study_app, study_report  # noqa: E402
from curlora.cli.sweep import sweep_app  # noqa: E402

app.command()(bench)
app.command()(report)
app.command()(merge)
app.command(name="study-report")(study_report)
app.add_typer(study_app, name="study")
app.command()(info)
app.add_typer(data_app, name="data")
app.command()(sft)
app.add_typer(sweep_app, name="sweep")
app.command(name="export-lora")(export_lora)
