"""`curlora merge`: one results.json and report from the parts of a study run in parallel (e.g. one per GPU)."""

from __future__ import annotations

from pathlib import Path

import typer

from curlora.cli._ui import console
from curlora.cli.bench import print_summary


def merge(
    run_dirs: list[Path] = typer.Argument(..., help="Run folders of one study (e.g. one per GPU)."),
    out: Path = typer.Option(..., help="Folder for the merged results.json, report.md and plots."),
) -> None:
    """Merge the results of several bench runs of one study and write one report."""
    from curlora.files import atomic_write_json
    from curlora.reports.bench import write_report
    from curlora.reports.results import RESULTS_FILE, load_results, merge_results

    merged = merge_results([load_results(d) for d in run_dirs])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / RESULTS_FILE, merged)
    path = write_report(out)
    print_summary(merged)
    console.print(f"merged {len(merged['runs'])} runs → {path}")
