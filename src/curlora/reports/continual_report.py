"""The second-edition study report (docs/REPORT.md): Markdown and plots from :mod:`curlora.reports.continual`.

The study folder holds ``results.json`` (kind "study") and ``findings.md``, a template whose ``{{key}}``
placeholders are filled from :func:`curlora.reports.continual.flat_values` (keys: that module's docstring), so the
prose quotes the data and cannot drift from it. :func:`render_report` is pure (same inputs, same text);
:func:`write_report2` also writes one ``<group>_pareto.png`` per group into the study folder.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from pathlib import Path
from typing import Any

from curlora.errors import CurloraError
from curlora.files import atomic_write_text
from curlora.reports.bench import _md_table, _new_figure, _save
from curlora.reports.continual import METRICS, analyse, flat_values, fmt, fmt_lr, load_study

__all__ = ["LORA_SCALING", "build_report", "fill_template", "plot_name", "render_companion", "render_report",
           "write_report2"]

logger = logging.getLogger(__name__)

FINDINGS_FILE = "findings.md"
# what curlora.methods.lora_config does (tests/reports/test_continual.py checks it against the code)
LORA_SCALING = ("PEFT LoRA with `lora_alpha = α·r`, so the update is α·B·A with no division by r "
                "(the original CURLoRA study's convention); CURLoRA's update α·C·U·R is not divided by r either")
_PLACEHOLDER = re.compile(r"\{\{\s*([^{}\s]+)\s*\}\}")


def fill_template(template: str, values: dict[str, str]) -> str:
    """Replace every ``{{key}}``; an unknown key is a CurloraError naming it and the closest known keys."""
    def sub(m: re.Match) -> str:
        key = m.group(1)
        if key not in values:
            close = difflib.get_close_matches(key, list(values), n=5, cutoff=0.5)
            hint = f"close keys: {', '.join(close)}" if close else "no close key"
            raise CurloraError(f"findings.md: unknown placeholder {{{{{key}}}}} ({hint}); use a key listed in "
                               "curlora.reports.continual's docstring.")
        return values[key]

    return _PLACEHOLDER.sub(sub, template)


def plot_name(group: str) -> str:
    return f"{group}_pareto.png"


def _pm(stat: dict[str, Any]) -> str:
    if stat["mean"] is None:
        return "—"
    return fmt(stat["mean"]) if stat["sd"] is None else f"{fmt(stat['mean'])} ± {fmt(stat['sd'])}"


def _ci(stat: dict[str, Any]) -> str:
    if stat["mean"] is None:
        return "—"
    if stat.get("low") is None:
        return f"{fmt(stat['mean'])} (n={stat['n']})"
    return f"{fmt(stat['mean'])} [{fmt(stat['low'])}, {fmt(stat['high'])}] (n={stat['n']})"


def _design(a: dict[str, Any]) -> list[str]:
    d, bench, env = a["design"], a["bench"], a["environment"]
    alpha = bench.get("alpha", 1.0)
    lines = ["## Design", "", "Pre-registered choices, read from the results file's design:", ""]
    lines += [
        f"- **Checkpoint:** {bench.get('model', '—')}"
        + (f" on {env.get('device') or env.get('device_name')}" if env.get("device") or env.get("device_name")
           else ""),
        f"- **Methods:** {', '.join(f'`{m}`' for m in d['methods'])}; reference: `{d['reference']}` (frozen "
        "backbone, one linear head per task: the accuracy that needs no adaptation)",
        f"- **Heads:** a fresh linear head per task, trained at head_lr = {fmt_lr(d.get('head_lr'))} for every "
        "method",
        f"- **Adapter learning rates:** {', '.join(fmt_lr(x) for x in d.get('lrs', []))}; one lr per family is "
        "selected on the validation split only (mean final average validation accuracy over units)",
        f"- **LoRA scaling:** {LORA_SCALING}; α = {alpha:g}",
        f"- **Seeds:** {', '.join(str(s) for s in d['seeds'])}; pairing unit: (setting, seed)",
        "- **Comparisons:** " + "; ".join(f"`{x}` vs `{y}`" for x, y in d["comparisons"])
        + f"; and every family vs `{d['reference']}`. 95 % paired Student-t intervals; \"beats\" only when the "
        "interval excludes zero; bootstrap over eval examples (2,000 resamples) for accuracy",
    ]
    for s in d["settings"]:
        lines.append(f"- **{s['name']}** ({s.get('group')}): {s.get('title', '')} — {' → '.join(s['order'])}")
    if a.get("ppl_name"):
        lines.append(f"- **Perplexity text:** {a['ppl_name']}")
    if a.get("commit") or a.get("created"):
        lines.append(f"- **Code:** commit {a.get('commit') or '—'}, results created {a.get('created') or '—'}")
    lines += ["", "### Tasks: majority baselines and label priors", ""]
    rows = []
    for t, info in a["tasks"].items():
        prior = "; ".join(f"{k}: {fmt(info['train_prior'].get(k))} / {fmt(info['eval_prior'].get(k))}"
                          for k in info["eval_prior"])
        rows.append([t, str(info["n_train"] or "—"), str(info["n_val"] or "—"), str(info["n_eval"]),
                     fmt(info["majority"]), prior])
    lines += _md_table(["Task", "Train", "Val", "Eval", "Majority (eval)", "Label share train / eval"], rows,
                        ["l", "r", "r", "r", "r", "l"])
    if a["suite_notes"]:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in a["suite_notes"]]
    return lines


def _group(g: dict[str, Any], reference: str, plot: str | None) -> list[str]:
    p = g["name"]
    lines = ["", f"## Group `{p}`", "",
             f"Settings: {', '.join(g['settings'])}; {len(g['units'])} units (setting × seed). Mean ± sd over units.",
             "", "### Model selection (validation only)", ""]
    rows = [[s["family"], fmt_lr(c["lr"]), str(c["n"]), fmt(c["val_acc"]), fmt(c["test_acc"]),
             "selected" if c["lr"] == s["lr"] else ""] for s in g["selection"] for c in s["candidates"]]
    lines += _md_table(["Family", "lr", "Units", "Val avg acc", "Test avg acc (not used)", ""], rows,
                        ["l", "r", "r", "r", "r", "l"])
    lines += ["", "### Methods (selected configurations)", ""]
    rows = []
    for f, fam in g["families"].items():
        rows.append([f, _pm(fam["acc"]), _ci(fam["learning"]) if f != reference else "—", _pm(fam["forgetting"]),
                     _pm(fam["bwt"]), _pm(fam["ppl"]), _pm(fam["kl"]), _pm(fam["dw"]),
                     "—" if fam["params"]["mean"] is None else f"{round(fam['params']['mean']):,}"])
    lines += _md_table(["Family", "Final avg acc", f"Learning vs {reference} [95 % CI]", "Forgetting", "BWT",
                        "PPL ratio", "KL", "‖ΔW‖/‖W‖", "Trainable params"], rows)
    lines += ["", "### Per task", "",
              f"Just-trained accuracy acc[j][j], final accuracy, gain over `{reference}` (same unit), forgetting "
              "and relative forgetting (forgetting / gain; n/a when the mean gain is ≤ 0.01).", ""]
    rows = []
    for f, fam in g["families"].items():
        for t, r in fam["tasks"].items():
            rows.append([f, t, _pm(r["diag"]), _pm(r["final"]), _pm(r["gain"]), _pm(r["forgetting"]),
                         "n/a (no gain)" if r["relforg"] is None else fmt(r["relforg"])])
    lines += _md_table(["Family", "Task", "Just trained", "Final", "Gain", "Forgetting", "Relative forgetting"],
                       rows, ["l", "l", "r", "r", "r", "r", "r"])
    lines += ["", "### Paired comparisons", "",
              "A − B per unit: mean [95 % t interval] (n); bootstrap: percentile interval over eval examples.", ""]
    rows = []
    for c in g["comparisons"]:
        for key, title, _ in METRICS:
            m = c["metrics"][key]
            boot = f"[{fmt(m['boot_low'])}, {fmt(m['boot_high'])}]" if key == "acc" and m.get("boot_low") is not None \
                else "—"
            rows.append([f"{c['a']} vs {c['b']}", title, _ci(m), boot, m["verdict"]])
    lines += _md_table(["A vs B", "Metric", "A − B [95 % CI] (n)", "Bootstrap 95 %", "Verdict"], rows,
                        ["l", "l", "r", "r", "l"])
    if g.get("same_lr"):
        lines += ["", "### The same comparisons at equal learning rates", "",
                  "A − B per unit at each rate both ran (whether a difference above follows the method or the rate "
                  "validation chose for it).", ""]
        rows = [[f"{c['a']} vs {c['b']}", fmt_lr(c["lr"]), title, _ci(c["metrics"][key]), c["metrics"][key]["verdict"]]
                for c in g["same_lr"] for key, title, _ in METRICS]
        lines += _md_table(["A vs B", "lr", "Metric", "A − B [95 % CI] (n)", "Verdict"], rows,
                           ["l", "r", "l", "r", "l"])
    lines += ["", "### Diverged runs", ""]
    if g["diverged"]:
        lines += _md_table(["Setting", "Run", "Seed", "Reason"],
                           [[d["setting"], d["label"], str(d["seed"]), d["reason"]] for d in g["diverged"]])
    else:
        lines.append("None.")
    if plot:
        lines += ["", f"![{p}: final accuracy against forgetting and perplexity ratio]({plot})"]
    return lines


def render_report(analysis: dict[str, Any], findings: str, plots: dict[str, str] | None = None) -> str:
    """The report's Markdown; `plots` maps a group name to its plot's link (relative to the report)."""
    plots = plots or {}
    body = fill_template(findings, flat_values(analysis)).strip()
    lines = [f"# {analysis['design'].get('title', 'Study report')}", ""]
    lines += _design(analysis)
    for g in analysis["groups"]:
        lines += _group(g, analysis["design"]["reference"], plots.get(g["name"]))
    if analysis.get("settings_compared"):
        lines += ["", "## Settings compared", ""] + _settings_table(analysis)
    lines += ["", "## Findings", "", body]
    return "\n".join(lines).rstrip() + "\n"


def _settings_table(analysis: dict[str, Any]) -> list[str]:
    rows = [[f"{c['a']} vs {c['b']}", c["family"], fmt_lr(c["lr"]), title, _ci(c["metrics"][key]),
             c["metrics"][key]["verdict"]] for c in analysis["settings_compared"] for key, title, _ in METRICS]
    return ["Setting A − setting B per seed, each family at each learning rate both ran.", ""] + _md_table(
        ["A vs B", "Family", "lr", "Metric", "A − B [95 % CI] (n)", "Verdict"], rows, ["l", "l", "r", "l", "r", "l"])


def render_companion(analysis: dict[str, Any], findings: str, link: str) -> str:
    """A companion study as one section of another report: what it ran, its settings compared, its findings
    (filled from its own results); `link` points to its full report."""
    d, env = analysis["design"], analysis["environment"]
    settings = "; ".join(f"**{s['name']}**: {s.get('title') or s['name']}" for s in d["settings"])
    tasks = " → ".join(d["settings"][0].get("order") or [])
    methods = ", ".join(f"`{m}`" for m in d["methods"])
    lrs, seeds = ", ".join(fmt_lr(x) for x in d["lrs"]), ", ".join(str(x) for x in d["seeds"])
    lines = [f"## Companion study: {d.get('title', 'study')}", "",
             f"Its own design, runs and report ([full report]({link})): {analysis['bench'].get('model', '—')} on "
             f"{env.get('device_name', '—')}, tasks {tasks}, methods {methods}, lrs {lrs}, seeds {seeds}; settings "
             f"{settings}; code {analysis.get('commit') or '—'}.", ""]
    if analysis.get("settings_compared"):
        lines += _settings_table(analysis) + [""]
    lines += [fill_template(findings, flat_values(analysis)).strip()]
    return "\n".join(lines).rstrip() + "\n"


def _plot(g: dict[str, Any], path: Path) -> None:
    fig = _new_figure(9.0, 3.8)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, key, title in ((axes[0], "forgetting", "forgetting"), (axes[1], "ppl", "perplexity after / before")):
        for k, (f, fam) in enumerate(g["families"].items()):
            acc, x = fam["acc"], fam[key]
            if acc["mean"] is None or x["mean"] is None:
                continue
            ax.errorbar([x["mean"]], [acc["mean"]], xerr=[x["sd"] or 0.0], yerr=[acc["sd"] or 0.0], marker="o",
                        capsize=3, color=f"C{k % 10}", label=f)
        ax.set_xlabel(f"{title} (mean ± sd)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("final average accuracy", fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 5), fontsize=8)
    fig.suptitle(f"group {g['name']}: selected configurations", fontsize=10)
    _save(fig, path)


def _read_findings(study_dir: Path) -> str:
    try:
        return (study_dir / FINDINGS_FILE).read_text(encoding="utf-8")
    except OSError as err:
        raise CurloraError(f"{study_dir} has no readable {FINDINGS_FILE} ({err}); add the findings template "
                           "there.") from None


def build_report(study_dir: str | Path, out: str | Path, *, write_plots: bool = True,
                 companions: list[tuple[str | Path, str | Path]] = ()) -> str:
    """The report text for `study_dir`, with plot links relative to `out`'s folder (plots written when asked).

    `companions`: (study folder, its own full report) pairs, each appended as a section (:func:`render_companion`);
    the folders' results and findings templates are read, nothing there is written."""
    study_dir, out = Path(study_dir), Path(out)
    analysis = analyse(load_study(study_dir))
    findings = _read_findings(study_dir)
    # every input is read and checked before anything is written
    extra = [(analyse(load_study(Path(c))), _read_findings(Path(c)), Path(os.path.relpath(r, out.parent)).as_posix())
             for c, r in companions]
    plots = {}
    for g in analysis["groups"]:
        path = study_dir / plot_name(g["name"])
        if write_plots:
            _plot(g, path)
        plots[g["name"]] = Path(os.path.relpath(path, out.parent)).as_posix()
    text = render_report(analysis, findings, plots)
    return "\n".join([text, *(render_companion(a, f, link) for a, f, link in extra)])


def write_report2(study_dir: str | Path, out: str | Path,
                  companions: list[tuple[str | Path, str | Path]] = ()) -> Path:
    """Write the report to `out` (atomically) and the plots into `study_dir`; return `out`."""
    out = Path(out)
    atomic_write_text(out, build_report(study_dir, out, companions=companions))
    logger.info("wrote %s", out)
    return out
