"""`curlora report`: regenerate report.md and the plots of a bench run from its results.json."""

from __future__ import annotations

from pathlib import Path

import typer

from curlora.cli._ui import console
from curlora.cli.bench import print_summary


def report(run_dir: Path = typer.Argument(..., help="A run folder holding results.json, or that file.")) -> None:
    """Regenerate report.md and the plots from a run folder's results.json."""
    from curlora.reports.bench import write_report
    from curlora.reports.results import load_results

    path = write_report(run_dir)  # run_dir may also be the results.json file itself
    print_summary(load_results(path.parent))
    console.print(f"report: {path}")
