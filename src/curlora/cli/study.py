"""`curlora study-report` (first edition: method groups from a merged results.json) and `curlora study report`
(second edition: a kind-"study" results.json, paired statistics, findings filled from the data)."""

from __future__ import annotations

from pathlib import Path

import typer

from curlora.cli._ui import console

study_app = typer.Typer(no_args_is_help=True, help="Run a study design (configs/studies/) and report on it.")


def study_report(
    study_dir: Path = typer.Argument(..., help="Folder with results.json, groups.json and findings.md."),
    out: Path = typer.Option(Path("docs/REPORT.md"), help="The Markdown file to write."),
) -> None:
    """Write one study report (several method groups, their tables and plots) from a merged results.json."""
    from curlora.reports.study import write_study_report

    console.print(f"report: {write_study_report(study_dir, out)}")


@study_app.command("run")
def run(
    design: Path = typer.Argument(..., help="A study design (TOML), e.g. configs/studies/continual.toml."),
    out: Path = typer.Option(Path("runs/study"), help="Study folder; rerunning the same command resumes it."),
    data_dir: Path | None = typer.Option(None, help="Folder with the paper data (GLUE layout, vader/, ...)."),
    only: str | None = typer.Option(None, help="Run only these settings (comma-separated); all are collected."),
    jobs: int = typer.Option(1, help="Worker processes per setting (several share a GPU)."),
    gpus: str | None = typer.Option(None, help="GPU indices, e.g. 0,1: workers go to them round-robin."),
    device: str = typer.Option("auto", help="auto, cpu, cuda (ignored with --gpus)."),
) -> None:
    """Run (or resume) every setting of a study as a sweep, then write STUDY/results.json."""
    from curlora.cli.bench import quiet_libraries
    from curlora.cli.sweep import LiveReporter, _nums
    from curlora.recipes.study import load_design, run_study
    from curlora.recipes.sweep import Options

    quiet_libraries()
    dd = str(data_dir) if data_dir else None
    plan = load_design(design, dd)
    options = Options(jobs=jobs, gpus=_nums(gpus, int, "--gpus"), device=device)
    chosen = [s.strip() for s in only.split(",") if s.strip()] if only else None
    console.print(f"[bold]curlora study[/] {plan['title']}: settings {', '.join(s['name'] for s in plan['settings'])}"
                  f" → {out}", highlight=False)
    results = run_study(plan, out, options, data_dir=dd, only=chosen, reporter=LiveReporter())
    done = sum(len(s["runs"]) for s in results["settings"])
    expected = sum(s["n_runs_expected"] for s in results["settings"])
    console.print(f"{done} of {expected} runs finished; results: {out / 'results.json'}")


@study_app.command("collect")
def collect(
    design: Path = typer.Argument(..., help="The study design (TOML) the folder was run with."),
    study_dir: Path = typer.Argument(..., help="The study folder."),
    data_dir: Path | None = typer.Option(None, help="The data folder it was run with."),
) -> None:
    """Write STUDY/results.json from the finished runs of every setting (settings run side by side with --only)."""
    from curlora.recipes.study import collect_study, load_design

    dd = str(data_dir) if data_dir else None
    results = collect_study(load_design(design, dd), study_dir, data_dir=dd)
    done = sum(len(s["runs"]) for s in results["settings"])
    console.print(f"{done} runs; results: {study_dir / 'results.json'}")


@study_app.command("merge")
def merge(
    files: list[Path] = typer.Argument(..., help="Study results.json files with the same settings."),
    out: Path = typer.Option(..., help="Where to write the merged results.json."),
) -> None:
    """Unite the runs of several studies of the same settings (e.g. a follow-up with more methods)."""
    from curlora.files import atomic_write_json
    from curlora.recipes.study import merge_studies
    from curlora.reports.continual import load_study

    merged = merge_studies([load_study(f) for f in files])  # each read and checked before anything is written
    atomic_write_json(out, merged)
    for label, d in merged["duplicates"].items():
        console.print(f"{label}: {d['runs']} run(s) in both files, final accuracies within "
                      f"{d['max_final_acc_diff']:.4f}")
    console.print(f"{sum(len(s['runs']) for s in merged['settings'])} runs → {out}")


@study_app.command("report")
def report2(
    study_dir: Path = typer.Argument(..., help="Folder with a study results.json and the findings.md template."),
    out: Path = typer.Option(Path("docs/REPORT.md"), help="The Markdown file to write."),
    companion: list[str] = typer.Option(
        [], help="DIR=REPORT: append the study in DIR as a section, linking its full REPORT (repeatable)."),
) -> None:
    """Write the second-edition study report: validation-selected configurations, paired intervals, findings."""
    from curlora.reports.continual_report import write_report2

    pairs = []
    for item in companion:
        folder, sep, full = item.partition("=")
        if not sep or not folder or not full:
            raise typer.BadParameter(f"{item!r} is not DIR=REPORT; give the companion study's folder and its "
                                     "full report, e.g. docs/quantized=docs/quantized/report.md",
                                     param_hint="--companion")
        pairs.append((Path(folder), Path(full)))
    console.print(f"report: {write_report2(study_dir, out, companions=pairs)}")
