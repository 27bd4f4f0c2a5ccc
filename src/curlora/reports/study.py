"""A study report: one results.json cut into groups of methods (e.g. main comparison, ablations), one Markdown file.

The study folder holds `results.json` (from `curlora merge`), `groups.json` (a list of {"slug", "title", "labels"})
and `findings.md` (the hand-written findings, which quote the numbers of the generated tables). Everything else —
tables, matrices and plots (one subfolder per group) — is generated from results.json.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from curlora.errors import CurloraError
from curlora.files import atomic_write_text
from curlora.reports.bench import render_sections, write_plots
from curlora.reports.results import load_results

_KEEP = ("Accuracy after each stage", "Metrics per method", "Accuracy matrices")
TITLE = "Does CURLoRA prevent forgetting? A study on real data"
# per-group counts and summed run times say nothing about the study as a whole: findings.md does
_OMIT = ("Runs", "Total wall time", "Created")


def subset(results: dict, labels: list[str]) -> dict:
    order = {label: k for k, label in enumerate(labels)}
    runs = sorted((r for r in results["runs"] if r["label"] in order), key=lambda r: (order[r["label"]], r["seed"]))
    missing = [label for label in labels if label not in {r["label"] for r in runs}]
    if missing:
        raise CurloraError(f"groups.json names methods with no runs in results.json: {', '.join(missing)}")
    return {**results, "runs": runs, "config": {**results["config"], "methods": labels}}


def write_study_report(study_dir: str | Path, out: str | Path) -> Path:
    study_dir, out = Path(study_dir), Path(out)
    results = load_results(study_dir)
    try:
        groups = json.loads((study_dir / "groups.json").read_text())
        findings = (study_dir / "findings.md").read_text()
    except (OSError, json.JSONDecodeError) as err:
        raise CurloraError(f"{study_dir} needs groups.json and findings.md ({err})") from None
    lines: list[str] = []
    for k, group in enumerate(groups):
        sub = subset(results, group["labels"])
        parts = render_sections(sub, title=TITLE, omit=_OMIT)
        header, sections = parts[0][1], dict(parts[1:])
        if k == 0:
            lines += [header.rstrip(), "", findings]
            if "Configuration" in sections:
                lines += ["", "## Configuration", "", sections["Configuration"].rstrip()]
        plot_dir = study_dir / group["slug"]
        plot_dir.mkdir(exist_ok=True)
        plots = write_plots(sub, plot_dir)
        lines += ["", f"## {group['title']}", ""]
        for name in _KEEP:
            if name in sections:
                # plot links in the generic report are relative to the run folder
                rel_dir = plot_dir.relative_to(out.parent)
                body = re.sub(r"\]\((\w+\.png)\)", rf"]({rel_dir}/\1)", sections[name].rstrip())
                lines += [f"### {name}", "", body, ""]
        rel = [p.relative_to(out.parent) for p in plots]
        lines += [f"![{p.stem}]({p})" for p in rel] + [""]
    atomic_write_text(out, "\n".join(lines).rstrip() + "\n")
    return out
