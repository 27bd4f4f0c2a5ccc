"""Markdown report and plots for a continual-learning bench run directory.

The bench writes ``results.json`` into its run directory (the contract: :mod:`curlora.reports.results`);
:func:`write_report` reads it and writes ``report.md``, ``acc_matrix.png``, ``acc_per_task.png`` and
``perplexity.png`` next to it (atomically). :func:`render_markdown` builds the Markdown from a results dict,
:func:`render_sections` the same as (title, body) pairs for reports built from parts of it, and
:func:`summary_rows` gives one row per method label (aggregated over seeds) for a CLI table. Nothing here
prints; plots use matplotlib's Agg canvas directly (no pyplot, no window).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from curlora.files import atomic_write_bytes, atomic_write_text
from curlora.metrics import average_accuracy, backward_transfer, forgetting, mean_sd
from curlora.reports.results import (
    RESULTS_FILE,
    SCHEMA_VERSION,
    Prepared,
    RunGroup,
    RunView,
    is_number,
    load_results,
    prepare,
    results_path,
    validate_results,
)

logger = logging.getLogger(__name__)

__all__ = [
    "PLOT_ACC_MATRIX",
    "PLOT_ACC_PER_TASK",
    "PLOT_PERPLEXITY",
    "REPORT_FILE",
    "RESULTS_FILE",
    "SCHEMA_VERSION",
    "load_results",
    "render_markdown",
    "summary_rows",
    "validate_results",
    "write_plots",
    "write_report",
]

REPORT_FILE = "report.md"
PLOT_ACC_MATRIX = "acc_matrix.png"
PLOT_ACC_PER_TASK = "acc_per_task.png"
PLOT_PERPLEXITY = "perplexity.png"

DASH = "—"
PM = "±"
INCOMPLETE_MARK = "*"

# --------------------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------------------


def _stat(values: list[float | None]) -> dict[str, Any]:
    m, sd = mean_sd(values)
    return {"mean": m, "sd": sd, "n": sum(v is not None for v in values)}


def _fmt_stat(
    stat: dict[str, Any], fmt: Callable[[float, float], tuple[str, str]], zero_sd: bool = True
) -> str:
    """'mean ± sd' where fmt(mean, sd) formats both in one unit; mean alone for one value (or sd 0 when
    zero_sd is False, for quantities such as parameter counts that are normally identical across seeds)."""
    m, sd = stat["mean"], stat["sd"]
    if m is None:
        return DASH
    if sd is None or (sd == 0 and not zero_sd):
        return fmt(m, 0.0)[0]
    a, b = fmt(m, sd)
    return f"{a} {PM} {b}"


def _f_acc(m: float, sd: float) -> tuple[str, str]:
    return f"{m:.2f}", f"{sd:.2f}"


def _f_delta(m: float, sd: float) -> tuple[str, str]:
    return f"{m:.3f}", f"{sd:.3f}"


def _f_ppl(m: float, sd: float) -> tuple[str, str]:
    if abs(m) >= 1e5:
        return f"{m:.3g}", f"{sd:.3g}"
    spec = ".1f" if abs(m) >= 100 else ".2f"
    return format(m, spec), format(sd, spec)


def _f_ratio(m: float, sd: float) -> tuple[str, str]:
    if abs(m) >= 1e3:
        return f"{m:.3g}", f"{sd:.3g}"
    return f"{m:.2f}", f"{sd:.2f}"


def _f_g3(m: float, sd: float) -> tuple[str, str]:
    return f"{m:.3g}", f"{sd:.2g}"


def _f_int(m: float, sd: float) -> tuple[str, str]:
    return f"{round(m):,}", f"{round(sd):,}"


def _f_bytes(m: float, sd: float) -> tuple[str, str]:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(m) >= scale:
            return f"{m / scale:.1f} {unit}", f"{sd / scale:.1f} {unit}"
    return f"{round(m)} B", f"{round(sd)} B"


def _f_time(m: float, sd: float) -> tuple[str, str]:
    if abs(m) >= 7200:
        return f"{m / 3600:.2f} h", f"{sd / 3600:.2f} h"
    if abs(m) >= 120:
        return f"{m / 60:.1f} min", f"{sd / 60:.1f} min"
    return f"{m:.1f} s", f"{sd:.1f} s"


def _f_lr(m: float, sd: float) -> tuple[str, str]:
    return f"{m:.2e}", f"{sd:.1e}"


def _md_cell(text: Any) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> list[str]:
    align = align or ["l"] + ["r"] * (len(header) - 1)
    sep = [":--" if a == "l" else "--:" for a in align]
    out = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "| " + " | ".join(sep) + " |"]
    out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return out


# --------------------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------------------

# (key, column title, formatter, show "± 0")
_SUMMARY_COLUMNS: list[tuple[str, str, Callable[[float, float], tuple[str, str]], bool]] = [
    ("avg_acc", "Avg acc", _f_acc, True),
    ("bwt", "BWT", _f_delta, True),
    ("forgetting", "Forgetting", _f_delta, True),
    ("ppl_before", "PPL before", _f_ppl, True),
    ("ppl_after", "PPL after", _f_ppl, True),
    ("ppl_ratio", "PPL after/before", _f_ratio, True),
    ("delta_norm_mean", "‖ΔW‖/‖W‖ mean", _f_g3, True),
    ("delta_norm_max", "‖ΔW‖/‖W‖ max", _f_g3, True),
    ("trainable_params", "Trainable params", _f_int, False),
    ("head_params", "Head params", _f_int, False),
    ("adapter_bytes", "Adapter size", _f_bytes, False),
    ("wall_s", "Wall time", _f_time, True),
    ("peak_lr", "Peak LR", _f_lr, False),
]


def _ratio(run: RunView) -> float | None:
    before, after = run.num("ppl_before"), run.num("ppl_after")
    return after / before if before and after is not None else None


def _group_stats(group: RunGroup) -> dict[str, dict[str, Any]]:
    done = group.complete_runs
    every = group.runs
    return {
        "avg_acc": _stat([average_accuracy(r.acc) for r in done]),
        "bwt": _stat([backward_transfer(r.acc) for r in done]),
        "forgetting": _stat([forgetting(r.acc) for r in done]),
        "ppl_before": _stat([r.num("ppl_before") for r in every]),
        "ppl_after": _stat([r.num("ppl_after") for r in done]),
        "ppl_ratio": _stat([_ratio(r) for r in done]),
        "delta_norm_mean": _stat([r.num("delta_norm_ratio", "mean") for r in done]),
        "delta_norm_max": _stat([r.num("delta_norm_ratio", "max") for r in done]),
        "trainable_params": _stat([r.num("trainable_params") for r in every]),
        "head_params": _stat([r.num("head_params") for r in every]),
        "adapter_bytes": _stat([r.num("adapter_bytes") for r in done]),
        "wall_s": _stat([r.num("wall_s") for r in done]),
        "peak_lr": _stat([r.num("peak_lr") for r in every]),
    }


def _seeds_text(group: RunGroup) -> str:
    n, done = len(group.runs), len(group.complete_runs)
    return str(n) if done == n else f"{n} ({n - done} incomplete)"


def _display_label(group: RunGroup) -> str:
    return group.label + (" (incomplete)" if len(group.complete_runs) < len(group.runs) else "")


def _summary(prep: Prepared) -> list[dict[str, Any]]:
    rows = []
    for g in prep.groups:
        first = g.runs[0].raw
        stats = _group_stats(g)
        text = {"Method": g.label, "Seeds": _seeds_text(g)}
        for key, title, fmt, zero_sd in _SUMMARY_COLUMNS:
            text[title] = _fmt_stat(stats[key], fmt, zero_sd)
        rows.append(
            {
                "label": g.label,
                "method": first.get("method"),
                "rank": first.get("rank"),
                "sampling": first.get("sampling"),
                "lr": first.get("lr"),
                "seeds": [r.seed for r in g.runs],
                "n_seeds": len(g.runs),
                "n_complete": len(g.complete_runs),
                "incomplete": len(g.complete_runs) < len(g.runs),
                **stats,
                "text": text,
            }
        )
    return rows


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per method label (order of first appearance in ``runs``), aggregated over seeds.

    Each row has ``label``, ``method``, ``rank``, ``sampling``, ``lr`` (from the label's first run),
    ``seeds`` (list), ``n_seeds``, ``n_complete``, ``incomplete`` (bool), one stats dict
    ``{"mean", "sd", "n"}`` per metric (``avg_acc``, ``bwt``, ``forgetting``, ``ppl_before``, ``ppl_after``,
    ``ppl_ratio``, ``delta_norm_mean``, ``delta_norm_max``, ``trainable_params``, ``head_params``,
    ``adapter_bytes``, ``wall_s``, ``peak_lr``; ``mean`` is None without data, ``sd`` is None below two
    values), and ``text``: an ordered ``{column title: formatted cell}`` dict, the same cells as the report's
    metrics table, ready for a rich table (``table.add_column(k) for k in rows[0]["text"]``).
    """
    return _summary(prepare(results))


def _cell_stat(values: list[float | None], expected: int, fmt) -> str:
    present = [v for v in values if v is not None]
    text = _fmt_stat(_stat(present), fmt)
    if present and len(present) < expected:
        text += INCOMPLETE_MARK
    return text


# --------------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------------


def _plots_for(prep: Prepared) -> list[tuple[str, str]]:
    plots = []
    if any(r.acc for r in prep.runs):
        plots.append((PLOT_ACC_MATRIX, "Accuracy matrices (mean over seeds)"))
        plots.append((PLOT_ACC_PER_TASK, "Accuracy on each task across stages"))
    if any(r.num("ppl_before") is not None or r.num("ppl_after") is not None for r in prep.runs):
        plots.append((PLOT_PERPLEXITY, "Perplexity before and after"))
    return plots


def _scalar_text(v: Any) -> str:
    if isinstance(v, str):
        return v
    return json.dumps(v, ensure_ascii=False, separators=(", ", ": "))


def render_sections(
    results: dict[str, Any], *, title: str = "Continual-learning benchmark report", omit: tuple[str, ...] = ()
) -> list[tuple[str | None, str]]:
    """The report as (section title, Markdown body) pairs; the first has title None: the header (title line,
    run facts, notes). `omit` leaves header facts out by name (e.g. "Runs" for a report of a subset)."""
    prep = prepare(results)
    cfg = results.get("config") or {}
    env = results.get("environment") or {}
    suite = results.get("suite") or {}
    tasks = prep.tasks
    lines: list[str] = [f"# {title}", ""]
    sections: list[tuple[str | None, int]] = [(None, 0)]  # (title, index in lines where its body starts)

    def section(name: str) -> None:
        lines.append("")
        sections.append((name, len(lines)))

    def item(name: str, value: Any) -> None:
        if value not in (None, "", []) and name not in omit:
            lines.append(f"- **{name}:** {value}")

    item("Model", cfg.get("model"))
    suite_text = suite.get("name") or ""
    if tasks:
        suite_text = f"{suite_text} ({' → '.join(tasks)})".strip()
    if suite.get("ppl_name"):
        suite_text += f"; perplexity text: {suite['ppl_name']}"
        details = [
            f"{what} {suite[key]:,}"
            for key, what in (
                ("ppl_tokens", "tokens"),
                ("ppl_max_length", "window"),
                ("ppl_stride", "stride"),
            )
            if is_number(suite.get(key))
        ]
        if details:
            suite_text += f" ({', '.join(details)})"
    item("Suite", suite_text)
    item("Preset", cfg.get("preset"))
    device = env.get("device_name") or cfg.get("device")
    if device and cfg.get("dtype"):
        device = f"{device}, {cfg['dtype']}"
    if device and cfg.get("quantize"):
        device = f"{device}, {cfg['quantize']} base (bitsandbytes)"
    item("Device", device)
    seeds: list[Any] = []
    for r in prep.runs:
        if r.seed not in seeds:
            seeds.append(r.seed)
    item("Seeds", ", ".join(str(s) for s in seeds))
    n_incomplete = sum(not r.complete for r in prep.runs)
    item("Runs", f"{len(prep.runs)}" + (f" ({n_incomplete} incomplete)" if n_incomplete else ""))
    walls = [r.num("wall_s") for r in prep.runs if r.num("wall_s") is not None]
    if walls:
        item("Total wall time", _f_time(math.fsum(walls), 0.0)[0])
    item("Created", results.get("created"))
    software = ", ".join(
        f"{k} {env[k]}" for k in ("torch", "transformers", "peft", "curlora", "python") if env.get(k)
    )
    item("Software", software)
    notes = [str(n) for n in (suite.get("notes") or [])]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]

    incomplete = [r for r in prep.runs if not r.complete]
    if incomplete:
        lines += [
            "",
            f"> **Incomplete results.** Cells marked {INCOMPLETE_MARK} come from fewer seeds than "
            "the label has; end-of-run metrics use complete runs only.",
        ]
        for r in incomplete:
            unfinished = " (run not finished)" if len(r.acc) == len(tasks) else ""
            lines.append(
                f"> - `{r.label}` seed {r.seed}: {len(r.acc)} of {len(tasks)} tasks finished{unfinished}"
            )

    scalars = {k: v for k, v in cfg.items() if not isinstance(v, dict)}
    if scalars:
        section("Configuration")
        lines.append("")
        lines += _md_table(
            ["Setting", "Value"], [[k, _scalar_text(v)] for k, v in scalars.items()], ["l", "l"]
        )

    section("Accuracy after each stage")
    lines.append("")
    if not prep.groups:
        lines.append("No runs recorded yet.")
    else:
        lines.append(
            f"Rows: accuracy on a task after training a stage; cells: mean {PM} sample sd over seeds "
            "(mean alone for one seed)."
        )
        lines.append("")
        header = ["Stage: task"] + [g.label for g in prep.groups]
        rows = []
        for i, ti in enumerate(tasks):
            for j in range(i + 1):
                row = [f"after {ti}: {tasks[j]}"]
                for g in prep.groups:
                    row.append(_cell_stat([r.cell(i, j) for r in g.runs], len(g.runs), _f_acc))
                rows.append(row)
        rows.append(
            ["perplexity before"]
            + [_cell_stat([r.num("ppl_before") for r in g.runs], len(g.runs), _f_ppl) for g in prep.groups]
        )
        rows.append(
            ["perplexity after"]
            + [
                _cell_stat([r.num("ppl_after") if r.complete else None for r in g.runs], len(g.runs), _f_ppl)
                for g in prep.groups
            ]
        )
        lines += _md_table(header, rows)

        summary = _summary(prep)
        section("Metrics per method")
        lines.append("")
        lines.append(
            f"Mean {PM} sample sd over seeds. Avg acc = mean of the final row; BWT = mean (final − "
            "just-trained) accuracy of earlier tasks; forgetting = mean (best earlier − final) accuracy. "
            "End-of-run metrics use complete runs only."
        )
        lines.append("")
        cols = list(summary[0]["text"])
        lines += _md_table(cols, [[row["text"][c] for c in cols] for row in summary])
        diverged = [f"{r['label']} (seed {r.get('seed')})" for r in results.get("runs", []) if r.get("diverged")]
        if diverged:
            lines += ["", f"Diverged (NaN weights; perplexity after and ‖ΔW‖/‖W‖ left out): {', '.join(diverged)}."]

        section("Accuracy matrices")
        lines.append("")
        lines.append("Mean over seeds; row = after training that task, column = task evaluated.")
        for g in prep.groups:
            n, bad = len(g.runs), len(g.runs) - len(g.complete_runs)
            about = f"{n} seed" + ("s" if n != 1 else "") + (f", {bad} incomplete" if bad else "")
            lines += ["", f"**{_md_cell(g.label)}** ({about})", ""]
            mrows = []
            for i, ti in enumerate(tasks):
                row = [f"after {ti}"]
                for j in range(len(tasks)):
                    if j > i:
                        row.append("")
                        continue
                    vals = [v for v in (r.cell(i, j) for r in g.runs) if v is not None]
                    if not vals:
                        row.append(DASH)
                    else:
                        mark = INCOMPLETE_MARK if len(vals) < len(g.runs) else ""
                        row.append(f"{math.fsum(vals) / len(vals):.2f}{mark}")
                mrows.append(row)
            lines += _md_table(["Stage"] + tasks, mrows)

    plots = _plots_for(prep)
    if plots:
        section("Plots")
        lines.append("")
        for name, title in plots:
            lines.append(f"![{title}]({name})")
            lines.append("")
        lines.pop()
    bounds = [start for _, start in sections[1:]] + [len(lines)]
    out = []
    for (name, start), end in zip(sections, bounds, strict=True):
        body = lines[start : end - 1] if name is None else lines[start:end]
        out.append((name, "\n".join(body).strip("\n")))
    return out


def render_markdown(results: dict[str, Any]) -> str:
    """The full report as Markdown. Deterministic: the same results give the same text."""
    parts = []
    for name, body in render_sections(results):
        parts.append(body if name is None else f"## {name}\n\n{body}")
    return "\n\n".join(parts) + "\n"


# --------------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------------


def _mean_matrix(group: RunGroup, n: int) -> list[list[float | None]]:
    out = []
    for i in range(n):
        row = []
        for j in range(n):
            vals = [v for v in (r.cell(i, j) for r in group.runs) if v is not None] if j <= i else []
            row.append(math.fsum(vals) / len(vals) if vals else None)
        out.append(row)
    return out


def _save(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    atomic_write_bytes(path, buf.getvalue())


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _plot_acc_matrix(prep: Prepared, path: Path) -> None:
    import numpy as np

    n, groups = len(prep.tasks), prep.groups
    cols = min(len(groups), 4)
    nrows = math.ceil(len(groups) / cols)
    fig = _new_figure(3.2 * cols + 0.8, 3.0 * nrows + 0.3)
    axes = fig.subplots(nrows, cols, squeeze=False)
    values = [v for g in groups for row in _mean_matrix(g, n) for v in row if v is not None]
    vmax = max([1.0] + values)
    vmin = min([0.0] + values)
    image = None
    for k, g in enumerate(groups):
        ax = axes[k // cols][k % cols]
        m = _mean_matrix(g, n)
        data = np.ma.masked_invalid(np.array([[np.nan if v is None else v for v in row] for row in m]))
        image = ax.imshow(data, vmin=vmin, vmax=vmax, cmap="viridis")
        for i in range(n):
            for j in range(n):
                if m[i][j] is not None:
                    shade = (m[i][j] - vmin) / (vmax - vmin or 1.0)
                    ax.text(
                        j,
                        i,
                        f"{m[i][j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="black" if shade > 0.6 else "white",
                    )
        ax.set_xticks(range(n), prep.tasks, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(n), [f"after {t}" for t in prep.tasks], fontsize=8)
        ax.set_xlabel("evaluated task", fontsize=8)
        ax.set_title(_display_label(g), fontsize=10)
    for k in range(len(groups), nrows * cols):
        axes[k // cols][k % cols].set_visible(False)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="accuracy")
    _save(fig, path)


def _plot_acc_per_task(prep: Prepared, path: Path) -> None:
    n, groups = len(prep.tasks), prep.groups
    cols = min(n, 4)
    nrows = math.ceil(n / cols)
    fig = _new_figure(3.4 * cols, 2.8 * nrows + 0.5)
    axes = fig.subplots(nrows, cols, squeeze=False, sharey=True)
    for j, task in enumerate(prep.tasks):
        ax = axes[j // cols][j % cols]
        for k, g in enumerate(groups):
            xs, ys, es = [], [], []
            for i in range(j, n):
                m, sd = mean_sd([r.cell(i, j) for r in g.runs])
                if m is not None:
                    xs.append(i)
                    ys.append(m)
                    es.append(sd or 0.0)
            if xs:
                ax.errorbar(
                    xs, ys, yerr=es, marker="o", capsize=3, label=_display_label(g), color=f"C{k % 10}"
                )
        ax.set_xticks(range(n), [f"after {t}" for t in prep.tasks], rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.5, n - 0.5)
        ax.set_title(f"task: {task}", fontsize=10)
        ax.set_ylabel("accuracy", fontsize=8)
        ax.grid(alpha=0.3)
    for k in range(n, nrows * cols):
        axes[k // cols][k % cols].set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if not handles:
        for ax in axes.ravel():
            handles, labels = ax.get_legend_handles_labels()
            if handles:
                break
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=8)
    _save(fig, path)


def _plot_perplexity(prep: Prepared, path: Path) -> None:
    groups = prep.groups
    fig = _new_figure(max(4.0, 1.3 * len(groups) + 1.5), 3.6)
    ax = fig.subplots()
    width = 0.38
    heights: list[float] = []
    for offset, key, name, color in (
        (-width / 2, "ppl_before", "before", "C0"),
        (width / 2, "ppl_after", "after", "C1"),
    ):
        xs, ys, es = [], [], []
        for k, g in enumerate(groups):
            runs = g.runs if key == "ppl_before" else g.complete_runs
            m, sd = mean_sd([r.num(key) for r in runs])
            if m is not None:
                xs.append(k + offset)
                ys.append(m)
                es.append(sd or 0.0)
        if xs:
            bars = ax.bar(xs, ys, width, yerr=es, capsize=3, label=name, color=color)
            ax.bar_label(bars, labels=[_f_ppl(y, 0.0)[0] for y in ys], label_type="center", fontsize=7)
            heights += ys
    positive = [h for h in heights if h > 0]
    if positive and max(positive) / min(positive) > 20:
        ax.set_yscale("log")
    ax.set_xticks(
        range(len(groups)), [_display_label(g) for g in groups], rotation=20, ha="right", fontsize=8
    )
    ax.set_ylabel("perplexity")
    ax.set_title("Perplexity on general text", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def write_plots(results: dict[str, Any], run_dir: str | os.PathLike) -> list[Path]:
    """Write the PNG plots that apply to ``results`` into ``run_dir``; return their paths."""
    prep = prepare(results)
    run_dir = Path(run_dir)
    makers = {
        PLOT_ACC_MATRIX: _plot_acc_matrix,
        PLOT_ACC_PER_TASK: _plot_acc_per_task,
        PLOT_PERPLEXITY: _plot_perplexity,
    }
    written = []
    for name, _ in _plots_for(prep):
        path = run_dir / name
        makers[name](prep, path)
        written.append(path)
    logger.debug("wrote %d plots into %s", len(written), run_dir)
    return written


def write_report(run_dir: str | os.PathLike) -> Path:
    """Read ``run_dir/results.json``; write ``report.md`` and the plots into ``run_dir``; return the report.

    ``run_dir`` may also be the path of the results file itself.
    """
    file = results_path(run_dir)
    results = load_results(file)
    run_dir = file.parent
    write_plots(results, run_dir)
    path = run_dir / REPORT_FILE
    atomic_write_text(path, render_markdown(results))
    logger.info("wrote %s", path)
    return path
