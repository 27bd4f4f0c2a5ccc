"""`curlora study-report` (first edition: method groups from a merged results.json) and `curlora study report`
(second edition: a kind-"study" results.json, paired statistics, findings filled from the data)."""

from __future__ import annotations

from pathlib import Path

import typer

from curlora.cli._ui import console

study_app = typer.Typer(no_args_is_help=True, help="Study reports from a study folder (docs/study2/).")


def study_report(
    study_dir: Path = typer.Argument(..., help="Folder with results.json, groups.json and findings.md."),
    out: Path = typer.Option(Path("docs/REPORT.md"), help="The Markdown file to write."),
) -> None:
    """Write one study report (several method groups, their tables and plots) from a merged results.json."""
    from curlora.reports.study import write_study_report

    console.print(f"report: {write_study_report(study_dir, out)}")


@study_app.command("report")
def report2(
    study_dir: Path = typer.Argument(..., help="Folder with a study results.json and the findings.md template."),
    out: Path = typer.Option(Path("docs/REPORT.md"), help="The Markdown file to write."),
) -> None:
    """Write the second-edition study report: validation-selected configurations, paired intervals, findings."""
    from curlora.reports.continual_report import write_report2

    console.print(f"report: {write_report2(study_dir, out)}")
