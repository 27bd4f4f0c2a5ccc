"""A sweep's report: both Pareto fronts as PNG plots and report.md with the non-dominated tables."""

from __future__ import annotations

import json
import os
from pathlib import Path

from curlora.files import atomic_write_text

REPORT_FILE = "report.md"
PLOTS = {"ppl": ("front-ppl.png", "ppl_ratio", "perplexity after / before (lower is better)"),
         "forgetting": ("front-forgetting.png", "forgetting", "forgetting (lower is better)")}


def _fmt(stat: dict, digits: int = 3, pct: bool = False) -> str:
    mean, sd = stat.get("mean"), stat.get("sd")
    if mean is None:
        return "—"
    scale, unit = (100.0, " pp") if pct else (1.0, "")
    text = f"{mean * scale:+.{digits - 2 if pct else digits}f}" if pct else f"{mean:.{digits}f}"
    return text + (f" ± {sd * scale:.{digits - 2 if pct else digits}f}" if sd is not None else "") + unit


def _size(stat: dict) -> str:
    mean = stat.get("mean")
    if mean is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if mean < 1024 or unit == "GiB":
            return f"{mean:.0f} {unit}" if unit == "B" else f"{mean:.1f} {unit}"
        mean /= 1024
    return "—"


def _plot(results: dict, name: str, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, key, ylabel = PLOTS[name]
    rows = [r for r in results["configurations"] if r["learning"]["mean"] is not None and r[key]["mean"] is not None]
    if not rows:
        return None
    methods = list(dict.fromkeys(r["method"] for r in rows))
    colours = {m: plt.get_cmap("tab10")(k % 10) for k, m in enumerate(methods)}
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        ax.errorbar([r["learning"]["mean"] for r in mine], [r[key]["mean"] for r in mine],
                    xerr=[r["learning"]["sd"] or 0 for r in mine], yerr=[r[key]["sd"] or 0 for r in mine],
                    fmt="o", color=colours[method], label=method, capsize=3, alpha=0.85)
    on = sorted((r for r in rows if r.get(f"front_{name}")), key=lambda r: r["learning"]["mean"])
    if on:
        ax.step([r["learning"]["mean"] for r in on], [r[key]["mean"] for r in on], where="post", color="black",
                lw=1.2, alpha=0.6, label="non-dominated (beyond seed noise)")
        ax.scatter([r["learning"]["mean"] for r in on], [r[key]["mean"] for r in on], s=140, facecolors="none",
                   edgecolors="black", lw=1.2)
    for r in rows:
        ax.annotate(r["label"], (r["learning"]["mean"], r[key]["mean"]), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xlabel(f"learning: final avg accuracy − {results['reference']} (same seeds; higher is better)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"sweep front: learning vs {key.replace('_', ' ')} (mean ± sd over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _table(rows: list[dict]) -> list[str]:
    head = ["Configuration", "Seeds", "Learning (pp)", "95% CI (pp)", "PPL ratio", "Forgetting", "BWT",
            "Trainable", "Adapter", "Front ppl", "Front forg."]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ci = r["learning"].get("ci95")
        cells = [
            f"`{r['label']}`" + (" (reference)" if r["reference"] else ""),
            str(len(r["seeds"])) + (f" ({len(r['diverged_seeds'])} diverged)" if r["diverged_seeds"] else ""),
            _fmt(r["learning"], pct=True).replace(" pp", ""),
            f"[{ci[0] * 100:+.1f}, {ci[1] * 100:+.1f}]" if ci else "—",
            _fmt(r["ppl_ratio"], 4),
            _fmt(r["forgetting"], 3),
            _fmt(r["bwt"], 3),
            f"{r['trainable_params']['mean']:,.0f}" if r["trainable_params"]["mean"] is not None else "—",
            _size(r["adapter_bytes"]),
            "✓" if r.get("front_ppl") else "",
            "✓" if r.get("front_forgetting") else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_markdown(results: dict) -> str:
    rows = results["configurations"]
    space, bench = results["space"], results["space"]["bench"]
    suite = results.get("suite") or {}
    lines = [
        "# Sweep report",
        "",
        f"Suite **{suite.get('name', bench.get('suite', '?'))}** ({' → '.join(suite.get('tasks') or [])}), "
        f"model **{bench.get('model', 'smollm2-135m')}**, preset **{bench.get('preset', 'quick')}**, "
        f"seeds {space['seeds']}, search **{results['search']['search']}**; "
        f"{results['n_runs_done']} runs of {len(rows)} configurations.",
        "",
        f"Learning is the final average accuracy minus that of `{results['reference']}` on the same seed. "
        "A configuration is dominated only when another one is better on one objective and better or exactly "
        "tied on the other, each judged by the paired 95 % t interval over the shared seeds excluding zero "
        "(with one seed, by the sign alone). Points inside the noise both stay on the front.",
        "",
    ]
    for name, (png, key, _) in PLOTS.items():
        front = [r for r in rows if r.get(f"front_{name}")]
        front.sort(key=lambda r: -(r["learning"]["mean"] or 0))
        lines += [f"## Front: learning ↑ vs {key.replace('_', ' ')} ↓", "", f"![{name} front]({png})", "",
                  "Non-dominated configurations:", "", *_table(front), ""]
    lines += ["## All configurations", "", *_table(rows), ""]
    if results.get("failures"):
        lines += ["## Failed runs", ""] + [f"- `{f['label']}` seed {f['seed']}" for f in results["failures"]] + [""]
    wall = results.get("wall_s")
    if wall:
        lines += [f"Sweep wall time {wall / 60:.1f} min (this invocation); run wall time summed over runs "
                  f"{results['run_wall_s_total'] / 60:.1f} min; {results['search'].get('jobs')} job(s).", ""]
    return "\n".join(lines)


def write_report(sweep_dir: str | os.PathLike, results: dict | None = None) -> Path:
    sweep_dir = Path(sweep_dir)
    if results is None:
        results = json.loads((sweep_dir / "results.json").read_text())
    for name, (png, _, _) in PLOTS.items():
        _plot(results, name, sweep_dir / png)
    path = sweep_dir / REPORT_FILE
    atomic_write_text(path, render_markdown(results))
    return path
