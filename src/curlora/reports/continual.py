"""The second-edition study analysis: a ``kind: "study"`` results.json in, one analysis dict and a flat table of
formatted values out (the Markdown and plots: :mod:`curlora.reports.continual_report`).

Input: ``results.json`` with ``kind == "study"`` and ``schema_version == 1``: ``design`` (seeds, lrs, methods,
reference, comparisons, settings) and ``settings``, each with its task order, suite (``task_info`` with per-example
``eval_labels``) and runs (``family``, ``lr``, ``seed``, ``acc``, ``val_acc``, ``pred``, perplexities, ...).
:func:`load_study` reads and checks it; every problem is one :class:`CurloraError` naming it and the fix.

Analysis (:func:`analyse`), per group of settings ("main" pools its orders; "paper" is one setting):

* unit = (setting name, seed): the pairing unit of every paired comparison;
* diverged runs (``diverged`` true, or a non-finite accuracy or perplexity) leave every mean and are listed;
* model selection on validation only: per family, the lr with the highest mean final average *validation*
  accuracy over units (ties: the smaller lr); test accuracy is shown beside it, never used;
* per run (selected configurations): final average accuracy, BWT and forgetting (:mod:`curlora.metrics`, the
  bench's definitions), per task the accuracy right after its stage ``acc[j][j]``, at the end ``acc[-1][j]`` and
  its forgetting ``max_{l in [j, T-1]} acc[l][j] − acc[T][j]`` (the per-task term of that same average; None for
  the last task), ppl ratio ``ppl_after / ppl_before``, KL, mean ‖ΔW‖/‖W‖, trainable parameters;
* against the reference (the probe: frozen backbone, independent heads): ``gain_j = acc[j][j] − probe acc[j][j]``
  (same setting and seed), learning = final avg acc − the probe's (paired per unit), relative forgetting of a task
  = mean forgetting / mean gain when the mean gain exceeds 0.01, else "n/a (no gain)";
* paired comparisons (design.comparisons, then every family against the reference) of final avg acc, forgetting,
  ppl ratio and KL: mean, sd, n, 95 % Student-t interval and a verdict (:func:`curlora.reports.stats.verdict`);
  for accuracy also a bootstrap over eval examples (2,000 resamples, percentile interval).

Placeholder keys of :func:`flat_values` (``{{key}}`` in findings.md; G = group, F/A/B = family, T = task name,
M = one of acc, forgetting, ppl, kl; numbers with 3 decimals, counts as integers, lrs as ``%g``):

* ``title``, ``commit``, ``created``, ``model``, ``seeds``, ``head_lr``, ``reference``, ``task.T.majority``,
  ``task.T.n_eval``;
* ``G.units``, ``G.settings``, ``G.diverged`` (count);
* ``G.family.F.lr`` (selected), ``G.family.F.val_acc`` and ``G.family.F.test_acc`` (of the selected lr, means);
* ``G.family.F.S.mean|sd|n`` for S in acc, bwt, forgetting, ppl, kl, dw, params;
* ``G.family.F.learning.mean|sd|low|high|n``; ``G.family.F.task.T.diag|final|gain|forgetting|relforg``;
* ``G.cmp.A.vs.B.M.mean|sd|low|high|n|verdict`` and ``G.cmp.A.vs.B.acc.boot_low|boot_high``;
* ``G.lr.LR.A.vs.B.M.mean|sd|low|high|n|verdict``: a design comparison at one learning rate both ran;
* ``set.S1.vs.S2.F.lr.LR.M.mean|sd|low|high|n|verdict``: design.settings_compared, setting S1 against S2 for
  family F at learning rate LR, paired by seed;
* ``setting.S.ppl_before``: the mean perplexity of setting S's base model before training (ppl ratios divide by it);
* ``dup.LABEL.runs|max_diff``: runs present in two merged files, and the largest difference of their final
  accuracies (`curlora study merge`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from curlora.errors import CurloraError
from curlora.methods import spec_family
from curlora.metrics import average_accuracy, backward_transfer, forgetting, mean_sd, validate_acc_matrix
from curlora.reports.stats import bootstrap_diff_interval, paired_stats, verdict

__all__ = ["METRICS", "analyse", "flat_values", "load_study", "pred_accuracy", "validate_study"]

RESULTS_FILE = "results.json"
# comparison metrics: key, title, higher is better
METRICS = (("acc", "final avg acc", True), ("forgetting", "forgetting", False), ("ppl", "ppl ratio", False),
           ("kl", "KL", False))
GAIN_MIN = 0.01
N_BOOT = 2000
_RUN_KEYS = ("label", "family", "seed", "acc", "val_acc", "pred")


def _fail(where: str, problem: str, fix: str) -> CurloraError:
    return CurloraError(f"{where}: {problem}; {fix}.")


def validate_study(results: Any, source: str = RESULTS_FILE) -> None:
    """Raise CurloraError unless `results` is a study results dict this module can analyse."""
    if not isinstance(results, dict) or results.get("kind") != "study":
        raise _fail(source, "is not a study results file (its \"kind\" is not \"study\")",
                    "pass the folder of a study (docs/study2/) whose results.json the study driver wrote")
    if results.get("schema_version") != 1:
        raise _fail(source, f"schema_version is {results.get('schema_version')!r}, not 1",
                    "regenerate it with the current study driver")
    design = results.get("design")
    if not isinstance(design, dict):
        raise _fail(source, "has no \"design\" object", "add the design (seeds, methods, reference, comparisons)")
    for key in ("seeds", "methods", "reference", "comparisons", "settings"):
        if key not in design:
            raise _fail(source, f"design has no \"{key}\"", f"add design.{key}")
    # the listed methods' families, and the sweep's own head_only reference, which runs without being listed
    families = list(dict.fromkeys([spec_family(m) for m in design["methods"]]
                                  + [r.get("family") for s in results.get("settings") or [] for r in s.get("runs") or []
                                     if isinstance(r, dict) and r.get("family")]))
    if design["reference"] not in families:
        raise _fail(source, f"design.reference {design['reference']!r} is not one of design.methods",
                    f"name one of {families}")
    for pair in design["comparisons"]:
        unknown = [f for f in pair if f not in families]
        if len(pair) != 2 or unknown:
            raise _fail(source, f"design.comparisons entry {pair!r} names unknown families {unknown}",
                        f"use two of design.methods: {families}")
    if not isinstance(results.get("settings"), list) or not results["settings"]:
        raise _fail(source, "has no settings", "add one entry per task order, each with its runs")
    for s in results["settings"]:
        where = f"{source}: setting {s.get('name')!r}"
        for key in ("name", "group", "order", "suite", "runs"):
            if key not in s:
                raise _fail(where, f"has no \"{key}\"", f"add settings[].{key}")
        info = {t.get("name"): t for t in s["suite"].get("task_info", [])}
        for task in s["order"]:
            t = info.get(task)
            if not t or not isinstance(t.get("eval_labels"), str) or not isinstance(t.get("eval_counts"), dict):
                raise _fail(where, f"suite.task_info has no eval_labels/eval_counts for task {task!r}",
                            "record every task's eval labels and class counts")
        for k, run in enumerate(s["runs"]):
            missing = [key for key in _RUN_KEYS if key not in run]
            if missing:
                raise _fail(f"{where} run {k} ({run.get('label')!r})", f"lacks {', '.join(missing)}",
                            "record these fields for every run")
            if run["family"] not in families:
                raise _fail(f"{where} run {run['label']!r}", f"family {run['family']!r} is not in design.methods",
                            f"add it to design.methods or drop the run (known: {families})")
            if not _diverged(run):
                _check_pred(run, s, info, where)


def load_study(study_dir: str | Path) -> dict[str, Any]:
    """Read `study_dir/results.json` (or that file) and check it; return the dict."""
    path = Path(study_dir)
    path = path / RESULTS_FILE if path.is_dir() else path
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CurloraError(f"cannot read {path} ({err}); pass a study folder holding results.json.") from None
    validate_study(results, str(path))
    return results


def pred_accuracy(pred: str, labels: str) -> float:
    """Accuracy of a string of predicted label digits against the eval labels (same order)."""
    return sum(p == q for p, q in zip(pred, labels, strict=True)) / len(labels)


def _check_pred(run: dict, setting: dict, info: dict, where: str) -> None:
    acc, pred = run["acc"], run["pred"]
    for i, row in enumerate(acc):
        for j in range(i + 1):
            labels = info[setting["order"][j]]["eval_labels"]
            p = pred[i][j] if i < len(pred) and j < len(pred[i]) else None
            if not isinstance(p, str) or len(p) != len(labels):
                raise _fail(f"{where} run {run['label']!r} seed {run['seed']}",
                            f"pred[{i}][{j}] is not a string of {len(labels)} label digits",
                            "record one predicted digit per eval example")
            if abs(pred_accuracy(p, labels) - row[j]) > 1e-6:
                raise _fail(f"{where} run {run['label']!r} seed {run['seed']}",
                            f"acc[{i}][{j}] = {row[j]} but its predictions give {pred_accuracy(p, labels)}",
                            "record acc and pred from the same evaluation")


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _diverged(run: dict) -> str | None:
    """Why a run counts as diverged, or None."""
    if run.get("diverged"):
        return "diverged during training"
    for key in ("acc", "val_acc"):
        if not all(_finite(v) for i, row in enumerate(run.get(key) or []) for v in row[: i + 1]):
            return f"non-finite {key}"
    for key in ("ppl_before", "ppl_after"):
        v = run.get(key)
        if v is not None and not _finite(v):
            return f"non-finite {key}"
    return None


def _num(run: dict, *path: str) -> float | None:
    v: Any = run
    for key in path:
        v = v.get(key) if isinstance(v, dict) else None
    return float(v) if _finite(v) else None


def _square(rows: list[list]) -> list[list]:
    """The bench stores the lower triangle; the metrics take a square matrix with None above the diagonal."""
    return [list(r) + [None] * (len(rows) - len(r)) for r in rows]


def _run_metrics(run: dict, order: list[str]) -> dict[str, Any]:
    acc, val = _square(run["acc"]), _square(run["val_acc"])
    rows = validate_acc_matrix(acc)
    t = len(rows) - 1
    before, after = _num(run, "ppl_before"), _num(run, "ppl_after")
    return {
        "acc": average_accuracy(acc),
        "val_acc": average_accuracy(val),
        "bwt": backward_transfer(acc),
        "forgetting": forgetting(acc),
        "ppl": after / before if before and after is not None else None,
        "kl": _num(run, "kl", "kl"),
        "dw": _num(run, "delta_norm_ratio", "mean"),
        "params": _num(run, "trainable_params"),
        "diag": {order[j]: rows[j][j] for j in range(t + 1)},
        "final": {order[j]: rows[t][j] for j in range(t + 1)},
        # the per-task term of metrics.forgetting (its mean over j < T is that function's value)
        "task_forgetting": {order[j]: (max(rows[k][j] for k in range(j, t)) - rows[t][j] if j < t else None)
                            for j in range(t + 1)},
    }


def _stat(values: list[float | None]) -> dict[str, Any]:
    m, sd = mean_sd(values)
    return {"mean": m, "sd": sd, "n": sum(v is not None for v in values)}


def _correct(run: dict, order: list[str], info: dict) -> dict[str, list[bool]]:
    last = run["pred"][-1]
    return {task: [p == q for p, q in zip(last[j], info[task]["eval_labels"], strict=True)]
            for j, task in enumerate(order)}


def _task_table(results: dict) -> dict[str, dict[str, Any]]:
    tasks: dict[str, dict[str, Any]] = {}
    for s in results["settings"]:
        for t in s["suite"]["task_info"]:
            if t["name"] in tasks:
                continue
            ev, tr = t["eval_counts"], t.get("train_counts") or {}
            n_ev, n_tr = sum(ev.values()), sum(tr.values())
            tasks[t["name"]] = {
                "labels": list(t.get("labels") or ev),
                "n_train": t.get("n_train"), "n_val": t.get("n_val"), "n_eval": len(t["eval_labels"]),
                "majority": max(ev.values()) / n_ev if n_ev else None,
                "train_prior": {k: v / n_tr for k, v in tr.items()} if n_tr else {},
                "eval_prior": {k: v / n_ev for k, v in ev.items()},
            }
    return tasks


def _select(runs: list[tuple[tuple[str, int], dict, dict]], family: str) -> dict[str, Any]:
    by_lr: dict[Any, list] = {}
    for unit, run, m in runs:
        by_lr.setdefault(run.get("lr"), []).append((unit, run, m))
    candidates = []
    for lr, rs in sorted(by_lr.items(), key=lambda kv: (kv[0] is None, kv[0] or 0.0)):
        candidates.append({"lr": lr, "n": len(rs), "val_acc": mean_sd([m["val_acc"] for _, _, m in rs])[0],
                           "test_acc": mean_sd([m["acc"] for _, _, m in rs])[0]})
    best = max(candidates, key=lambda c: c["val_acc"]) if candidates else None  # max keeps the first: smaller lr
    return {"family": family, "lr": best["lr"] if best else None, "val_acc": best["val_acc"] if best else None,
            "test_acc": best["test_acc"] if best else None, "candidates": candidates}


def _paired(units: dict, a: str, b: str, key: str) -> list[float]:
    out = []
    for u in sorted(set(units[a]) & set(units[b])):
        va, vb = units[a][u][1][key], units[b][u][1][key]
        if va is not None and vb is not None:
            out.append(va - vb)
    return out


def _compare(units: dict, a: str, b: str) -> dict[str, dict]:
    """A − B per shared unit for every metric: paired stats and a verdict each."""
    metrics = {}
    for key, _, higher in METRICS:
        st = paired_stats(_paired(units, a, b, key))
        metrics[key] = {**st, "verdict": verdict(a, b, st, higher)}
    return metrics


def _group(results: dict, name: str, tasks_info: dict, n_boot: int, seed: int) -> dict[str, Any]:
    design = results["design"]
    ref = design["reference"]
    settings = [s for s in results["settings"] if s["group"] == name]
    per_family: dict[str, list] = {spec_family(m): [] for m in design["methods"]}
    diverged, orders, info = [], {}, {}
    for s in settings:
        orders[s["name"]] = s["order"]
        info[s["name"]] = {t["name"]: t for t in s["suite"]["task_info"]}
        for run in s["runs"]:
            per_family.setdefault(run["family"], [])  # e.g. the sweep's own head_only reference, not listed
            why = _diverged(run)
            if why:
                diverged.append({"setting": s["name"], "label": run["label"], "seed": run["seed"], "reason": why})
                continue
            per_family[run["family"]].append(((s["name"], run["seed"]), run, _run_metrics(run, s["order"])))
    # a family without runs in this group (a follow-up run on some settings only) is left out of it
    families = [f for f, runs in per_family.items() if runs]
    selection = [_select(per_family[f], f) for f in families]
    chosen = {sel["family"]: sel["lr"] for sel in selection}
    # units[f][(setting, seed)] = (run, metrics) of the selected configuration
    units = {f: {u: (r, m) for u, r, m in per_family[f] if r.get("lr") == chosen[f]} for f in families}
    task_names = list(dict.fromkeys(t for s in settings for t in s["order"]))
    fam_out = {}
    for f in families:
        ms = [m for _, m in units[f].values()]
        fam = {k: _stat([m[k] for m in ms]) for k in ("acc", "val_acc", "bwt", "forgetting", "ppl", "kl", "dw",
                                                      "params")}
        fam["learning"] = paired_stats(_paired(units, f, ref, "acc"))
        fam["tasks"] = {}
        for t in task_names:
            gains = [m["diag"][t] - units[ref][u][1]["diag"][t] for u, (_, m) in units[f].items()
                     if u in units[ref] and t in m["diag"]]
            forg = _stat([m["task_forgetting"].get(t) for m in ms])
            gain = _stat(gains)
            rel = (forg["mean"] / gain["mean"] if forg["mean"] is not None and gain["mean"] is not None
                   and gain["mean"] > GAIN_MIN else None)
            fam["tasks"][t] = {"diag": _stat([m["diag"].get(t) for m in ms]),
                               "final": _stat([m["final"].get(t) for m in ms]),
                               "gain": gain, "forgetting": forg, "relforg": rel}
        fam_out[f] = fam
    pairs = [tuple(p) for p in design["comparisons"] if set(p) <= set(families)]
    pairs += [(f, ref) for f in families if f != ref and (f, ref) not in pairs]
    comparisons = []
    for a, b in pairs:
        metrics = _compare(units, a, b)
        shared = sorted(set(units[a]) & set(units[b]))
        boot = bootstrap_diff_interval(
            [_correct(units[a][u][0], orders[u[0]], info[u[0]]) for u in shared],
            [_correct(units[b][u][0], orders[u[0]], info[u[0]]) for u in shared], n_boot=n_boot, seed=seed)
        metrics["acc"]["boot_low"], metrics["acc"]["boot_high"] = boot if boot else (None, None)
        comparisons.append({"a": a, "b": b, "metrics": metrics})
    return {
        "name": name,
        "same_lr": _same_lr(per_family, [tuple(p) for p in design["comparisons"] if set(p) <= set(families)]),
        "settings": [s["name"] for s in settings],
        "titles": {s["name"]: s.get("title") or next((d.get("title") for d in design["settings"]
                                                        if d.get("name") == s["name"]), None) for s in settings},
        "orders": orders,
        "units": sorted({u for f in families for u in units[f]}),
        "tasks": task_names,
        "selection": selection,
        "families": fam_out,
        "comparisons": comparisons,
        "diverged": diverged,
    }


def _same_lr(per_family: dict[str, list], pairs: list[tuple]) -> list[dict[str, Any]]:
    """The design's comparisons at every learning rate both families ran (not only the selected ones): whether a
    difference belongs to the method or to the rate that validation chose for it."""
    out = []
    for a, b in pairs:
        lrs_a = {r.get("lr") for _, r, _ in per_family[a]}
        for lr in sorted(lrs_a & {r.get("lr") for _, r, _ in per_family[b]}):
            units = {f: {u: (r, m) for u, r, m in per_family[f] if r.get("lr") == lr} for f in (a, b)}
            out.append({"a": a, "b": b, "lr": lr, "metrics": _compare(units, a, b)})
    return out


def _settings_compared(results: dict) -> list[dict[str, Any]]:
    """design.settings_compared: setting A against setting B (e.g. a 4-bit base against bf16), family by family at
    every learning rate both ran, paired by seed; diverged runs left out."""
    by_name = {s["name"]: s for s in results["settings"]}
    out = []
    for name_a, name_b in results["design"].get("settings_compared") or []:
        runs = {}
        for name in (name_a, name_b):
            s = by_name[name]
            runs[name] = {(r["family"], r.get("lr"), r["seed"]): _run_metrics(r, s["order"])
                          for r in s["runs"] if not _diverged(r)}
        keys = sorted({(f, lr) for f, lr, _ in runs[name_a]} & {(f, lr) for f, lr, _ in runs[name_b]},
                      key=lambda k: (k[0], k[1] or 0))
        for fam, lr in keys:
            units = {side: {seed: (None, m) for (f, x, seed), m in runs[side].items() if (f, x) == (fam, lr)}
                     for side in (name_a, name_b)}
            out.append({"a": name_a, "b": name_b, "family": fam, "lr": lr, "metrics": _compare(units, name_a, name_b)})
    return out


def analyse(results: dict[str, Any], *, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """The whole analysis of a (validated) study results dict; deterministic for a given seed."""
    validate_study(results)
    tasks = _task_table(results)
    groups = list(dict.fromkeys(s["group"] for s in results["settings"]))
    first = results["settings"][0]
    ran = {s["name"]: s["order"] for s in results["settings"]}
    design = dict(results["design"])  # a setting without a task_order ran its suite's order: name it
    design["settings"] = [{**s, "order": s.get("order") or ran.get(s["name"]) or []} for s in design["settings"]]
    return {
        "design": design,
        "created": results.get("created"),
        "commit": results.get("commit"),
        "bench": first.get("bench") or results["design"].get("bench") or {},
        "environment": first.get("environment") or {},
        "suite_notes": list(dict.fromkeys(n for s in results["settings"] for n in s["suite"].get("notes", []))),
        "ppl_name": first["suite"].get("ppl_name"),
        "tasks": tasks,
        "duplicates": results.get("duplicates") or {},
        "settings_compared": _settings_compared(results),
        # the base model's own perplexity per setting (a quantized base has its own): what ppl ratios divide by
        "ppl_before": {s["name"]: mean_sd(r.get("ppl_before") for r in s["runs"])[0] for s in results["settings"]},
        "groups": [_group(results, g, tasks, n_boot, seed) for g in groups],
    }


# --------------------------------------------------------------------------------------------------------
# Flat values for the findings template
# --------------------------------------------------------------------------------------------------------


def fmt(x: Any) -> str:
    """Numbers with 3 decimals (no "-0.000"), ints as ints, None as "—"."""
    if x is None:
        return "—"
    if isinstance(x, bool) or isinstance(x, str):
        return str(x)
    if isinstance(x, int):
        return str(x)
    text = f"{x:.3f}"
    return "0.000" if text == "-0.000" else text


def fmt_lr(lr: Any) -> str:
    return "—" if lr is None else f"{lr:g}"


def flat_values(analysis: dict[str, Any]) -> dict[str, str]:
    """Every placeholder key (see the module docstring) with its formatted value."""
    d = analysis["design"]
    out = {
        "title": str(d.get("title", "")), "commit": str(analysis.get("commit") or "—"),
        "created": str(analysis.get("created") or "—"), "model": str(analysis["bench"].get("model", "—")),
        "seeds": ", ".join(str(s) for s in d["seeds"]), "head_lr": fmt_lr(d.get("head_lr")),
        "reference": d["reference"],
    }
    for name, st in (analysis.get("ppl_before") or {}).items():
        out[f"setting.{name}.ppl_before"] = fmt(st)
    for c in analysis.get("settings_compared") or []:
        _put_metrics(out, f"set.{c['a']}.vs.{c['b']}.{c['family']}.lr.{fmt_lr(c['lr'])}", c["metrics"])
    for label, d in (analysis.get("duplicates") or {}).items():
        out[f"dup.{label}.runs"] = str(d["runs"])
        out[f"dup.{label}.max_diff"] = f"{d['max_final_acc_diff']:.4f}"
    for t, info in analysis["tasks"].items():
        out[f"task.{t}.majority"] = fmt(info["majority"])
        out[f"task.{t}.n_eval"] = str(info["n_eval"])
    for g in analysis["groups"]:
        p = g["name"]
        out[f"{p}.units"] = str(len(g["units"]))
        out[f"{p}.settings"] = ", ".join(g["settings"])
        out[f"{p}.diverged"] = str(len(g["diverged"]))
        for sel in g["selection"]:
            f = sel["family"]
            out[f"{p}.family.{f}.lr"] = fmt_lr(sel["lr"])
            out[f"{p}.family.{f}.val_acc"] = fmt(sel["val_acc"])
            out[f"{p}.family.{f}.test_acc"] = fmt(sel["test_acc"])
        for f, fam in g["families"].items():
            for k in ("acc", "bwt", "forgetting", "ppl", "kl", "dw", "params"):
                for stat in ("mean", "sd", "n"):
                    v = fam[k][stat]
                    out[f"{p}.family.{f}.{k}.{stat}"] = (f"{round(v):,}" if k == "params" and v is not None
                                                         and stat != "n" else fmt(v))
            for stat in ("mean", "sd", "low", "high", "n"):
                out[f"{p}.family.{f}.learning.{stat}"] = fmt(fam["learning"][stat])
            for t, row in fam["tasks"].items():
                for k in ("diag", "final", "gain", "forgetting"):
                    out[f"{p}.family.{f}.task.{t}.{k}"] = fmt(row[k]["mean"])
                out[f"{p}.family.{f}.task.{t}.relforg"] = "n/a (no gain)" if row["relforg"] is None else fmt(
                    row["relforg"])
        for c in g["same_lr"]:
            _put_metrics(out, f"{p}.lr.{fmt_lr(c['lr'])}.{c['a']}.vs.{c['b']}", c["metrics"])
        for c in g["comparisons"]:
            _put_metrics(out, f"{p}.cmp.{c['a']}.vs.{c['b']}", c["metrics"])
    return out


def _put_metrics(out: dict[str, str], prefix: str, metrics: dict[str, dict]) -> None:
    """``prefix.M.stat`` for every metric M and statistic of one comparison (verdicts as written)."""
    for key, m in metrics.items():
        for stat, v in m.items():
            out[f"{prefix}.{key}.{stat}"] = v if stat == "verdict" else fmt(v)
