"""`curlora study-report`: the study report (method groups, tables, plots, findings) from a merged results.json."""

from __future__ import annotations

from pathlib import Path

import typer

from curlora.cli._ui import console


def study_report(
    study_dir: Path = typer.Argument(..., help="Folder with results.json, groups.json and findings.md."),
    out: Path = typer.Option(Path("docs/REPORT.md"), help="The Markdown file to write."),
) -> None:
    """Write one study report (several method groups, their tables and plots) from a merged results.json."""
    from curlora.reports.study import write_study_report

    console.print(f"report: {write_study_report(study_dir, out)}")
