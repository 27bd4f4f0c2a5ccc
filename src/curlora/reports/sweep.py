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


# perplexity ratios above this are drawn at the top edge (a diverged run's ratio can reach 1e8 and would flatten
# every other point onto the axis)
PPL_CLIP = 10.0


def mean_front(rows: list[dict], key: str) -> list[dict]:
    """The classical Pareto front of the means (higher learning, lower `key`), ignoring seed noise: what a reader
    would draw by eye. The noise-aware front (`front_<name>` in the results) is never smaller than this."""
    out = []
    for r in rows:
        x, y = r["learning"]["mean"], r[key]["mean"]
        if not any(o is not r and o["learning"]["mean"] >= x and o[key]["mean"] <= y
                   and (o["learning"]["mean"] > x or o[key]["mean"] < y) for o in rows):
            out.append(r)
    return sorted(out, key=lambda r: r["learning"]["mean"])


def _plot(results: dict, name: str, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, key, ylabel = PLOTS[name]
    rows = [r for r in results["configurations"] if r["learning"]["mean"] is not None and r[key]["mean"] is not None]
    if not rows:
        return None
    log = name == "ppl"
    top = PPL_CLIP if log else None

    def y_of(r: dict) -> float:
        return min(r[key]["mean"], top) if top else r[key]["mean"]

    methods = list(dict.fromkeys(r["method"] for r in rows))
    colours = {m: plt.get_cmap("tab10")(k % 10) for k, m in enumerate(methods)}
    fig, ax = plt.subplots(figsize=(9, 6), dpi=120)
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        inside = [r for r in mine if not top or r[key]["mean"] <= top]
        ys = [y_of(r) for r in inside]
        sds = [r[key]["sd"] or 0 for r in inside]
        # on a log axis an error bar may not cross zero: the lower arm stops just above it
        lower = [min(sd, 0.999 * y) if log else sd for y, sd in zip(ys, sds, strict=True)]
        ax.errorbar([r["learning"]["mean"] for r in inside], ys, xerr=[r["learning"]["sd"] or 0 for r in inside],
                    yerr=[lower, sds], fmt="o", color=colours[method], label=method, capsize=2, alpha=0.8, ms=5)
        over = [r for r in mine if top and r[key]["mean"] > top]
        if over:
            ax.scatter([r["learning"]["mean"] for r in over], [top] * len(over), marker="^", color=colours[method],
                       alpha=0.8, s=30)
    noisy = [r for r in rows if r.get(f"front_{name}")]
    ax.scatter([r["learning"]["mean"] for r in noisy], [y_of(r) for r in noisy], s=90, facecolors="none",
               edgecolors="grey", lw=0.8, label="not dominated beyond seed noise")
    front = mean_front(rows, key)
    ax.step([r["learning"]["mean"] for r in front], [y_of(r) for r in front], where="post", color="black", lw=1.2,
            label="Pareto front of the means")
    for r in front:
        ax.annotate(r["label"], (r["learning"]["mean"], y_of(r)), fontsize=7, xytext=(4, -9 if log else 4),
                    textcoords="offset points")
    if log:
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.97 * min(y_of(r) for r in rows), top=top * 1.3)
        ax.axhline(top, color="grey", lw=0.6, ls=":")
        ax.text(ax.get_xlim()[0], top * 1.05, f"▲ ratio > {top:g} (shown at {top:g})", fontsize=7, color="grey")
    ax.set_xlabel(f"learning: final avg accuracy − {results['reference']} (same seeds; higher is better)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"sweep: learning vs {key.replace('_', ' ')} (mean ± sd over seeds)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
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
