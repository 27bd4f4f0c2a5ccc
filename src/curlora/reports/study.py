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
from curlora.io import atomic_write_text
from curlora.report import load_results, render_markdown, write_plots

_KEEP = ("Accuracy after each stage", "Metrics per method", "Accuracy matrices")


def _sections(markdown: str) -> tuple[str, dict[str, str]]:
    """Split a rendered report into its header (before the first '## ') and its '## ' sections."""
    parts = re.split(r"^## ", markdown, flags=re.M)
    return parts[0], {p.split("\n", 1)[0].strip(): p.split("\n", 1)[1] for p in parts[1:]}


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
        header, sections = _sections(render_markdown(sub))
        if k == 0:
            # per-group counts and summed run times say nothing about the study as a whole: findings.md does
            header = re.sub(r"^- \*\*(Runs|Total wall time|Created):\*\*.*\n", "", header, flags=re.M)
            title = "# Does CURLoRA prevent forgetting? A study on real data"
            lines += [header.replace("# Continual-learning benchmark report", title).rstrip(), "", findings]
            if "Configuration" in sections:
                lines += ["", "## Configuration", sections["Configuration"].rstrip()]
        plot_dir = study_dir / group["slug"]
        plot_dir.mkdir(exist_ok=True)
        plots = write_plots(sub, plot_dir)
        lines += ["", f"## {group['title']}", ""]
        for name in _KEEP:
            if name in sections:
                body = sections[name].rstrip()
                # plot links in the generic report are relative to the run folder
                rel_dir = plot_dir.relative_to(out.parent)
                body = re.sub(r"\]\((\w+\.png)\)", rf"]({rel_dir}/\1)", body)
                lines += [f"### {name}", body, ""]
        rel = [p.relative_to(out.parent) for p in plots]
        lines += [f"![{p.stem}]({p})" for p in rel] + [""]
    atomic_write_text(out, "\n".join(lines).rstrip() + "\n")
    return out
