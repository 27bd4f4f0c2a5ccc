"""The objectives of a sweep, from the bench's per-run records: per run, then per configuration over seeds."""

from __future__ import annotations

from curlora.metrics import average_accuracy, backward_transfer, forgetting, mean_sd
from curlora.recipes.sweep.pareto import front, paired_interval

# (key, higher is better) of the two fronts
FRONTS = {"ppl": (("learning", True), ("ppl_ratio", False)), "forgetting": (("learning", True), ("forgetting", False))}
METRICS = ("learning", "avg_acc", "forgetting", "bwt", "ppl_ratio", "trainable_params", "adapter_bytes", "wall_s")


def run_metrics(record: dict) -> dict:
    """One finished bench run (the bench's run.json) as the numbers a sweep compares."""
    rows = record.get("acc") or []
    acc = [list(r) + [None] * (len(rows) - len(r)) for r in rows]  # the bench stores the lower triangle
    before, after = record.get("ppl_before"), record.get("ppl_after")
    return {
        "seed": record["seed"],
        "avg_acc": average_accuracy(acc) if acc else None,
        "forgetting": forgetting(acc) if acc else None,
        "bwt": backward_transfer(acc) if acc else None,
        "ppl_before": before,
        "ppl_after": after,
        "ppl_ratio": after / before if after is not None and before else None,
        "diverged": bool(record.get("diverged")),
        "trainable_params": record.get("trainable_params"),
        "adapter_bytes": record.get("adapter_bytes"),
        "peak_lr": record.get("peak_lr"),
        "wall_s": record.get("wall_s"),
    }


def _stat(values: list) -> dict:
    present = [v for v in values if v is not None]
    mean, sd = mean_sd(present)
    return {"mean": mean, "sd": sd, "n": len(present)}


def summarize(configs: list[dict], runs: dict[str, dict[int, dict]]) -> list[dict]:
    """Per configuration: every metric's mean/sd/n over seeds, learning = avg_acc minus the reference's avg_acc on
    the same seed (with its paired 95 % interval), and its place on both fronts.

    `configs`: Configuration dicts (one has reference=True); `runs`: label -> seed -> run_metrics."""
    ref = next(c["label"] for c in configs if c["reference"])
    ref_acc = {s: m["avg_acc"] for s, m in runs.get(ref, {}).items() if m["avg_acc"] is not None}
    rows = []
    per_seed: dict[str, dict[str, dict[int, float]]] = {}
    for conf in configs:
        seeds = runs.get(conf["label"], {})
        learning = {s: m["avg_acc"] - ref_acc[s] for s, m in seeds.items()
                    if m["avg_acc"] is not None and s in ref_acc}
        values = {"learning": learning}
        for key in ("forgetting", "ppl_ratio"):
            values[key] = {s: m[key] for s, m in seeds.items() if m[key] is not None}
        per_seed[conf["label"]] = values
        row = {**conf, "seeds": sorted(seeds), "diverged_seeds": sorted(s for s, m in seeds.items() if m["diverged"])}
        for key in METRICS:
            vals = list(learning.values()) if key == "learning" else [m[key] for m in seeds.values()]
            row[key] = _stat(vals)
        interval = paired_interval(list(learning.values()))
        row["learning"]["ci95"] = [interval[1], interval[2]] if interval else None
        rows.append(row)
    for name, objectives in FRONTS.items():
        keys, higher = [k for k, _ in objectives], [h for _, h in objectives]
        dominated_by = front({c: [per_seed[c][k] for k in keys] for c in per_seed}, higher)
        for row in rows:
            doms = dominated_by.get(row["label"])
            row[f"front_{name}"] = None if doms is None else not doms
            row[f"dominated_by_{name}"] = doms
    return rows
