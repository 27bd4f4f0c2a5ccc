"""`curlora sweep recommend`: the configuration that learns the most within a forgetting budget."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from curlora.errors import CurloraError
from curlora.recipes.sweep.pareto import compare
from curlora.recipes.sweep.runner import RESULTS_FILE

# bench options `curlora bench` takes on its command line (others are Python-only: make_config(...))
_BENCH_FLAGS = ("model", "suite", "data_dir", "n_train", "n_eval", "batch_size", "eval_batch_size", "warmup_steps",
                "max_length", "ppl_max_length", "ppl_stride", "ppl_max_tokens", "dtype")


def parse_fraction(text: str | float | None, what: str) -> float | None:
    """`5%` or `0.05` -> 0.05."""
    if text is None:
        return None
    s = str(text).strip()
    try:
        value = float(s[:-1]) / 100 if s.endswith("%") else float(s)
    except ValueError:
        raise CurloraError(f"{what} must be a number or a percentage (e.g. 5% or 0.05), got {text!r}") from None
    if value < 0:
        raise CurloraError(f"{what} must be >= 0, got {text!r}")
    return value


def load_sweep_results(run: str | Path) -> dict:
    path = Path(run)
    path = path / RESULTS_FILE if path.is_dir() else path
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise CurloraError(f"{path} does not exist; give a sweep folder that `curlora sweep` finished") from None
    except json.JSONDecodeError:
        raise CurloraError(f"{path} is not valid JSON; rerun the sweep to rewrite it") from None
    if results.get("kind") != "sweep":
        raise CurloraError(f"{path} is not a sweep's results.json (a bench run?); give a sweep folder")
    return results


def _excess(row: dict, max_ppl_ratio: float | None, max_forgetting: float | None) -> float | None:
    """How far the configuration's means are over budget (0 within it); None when a needed value is missing."""
    over = 0.0
    for key, limit in (("ppl_ratio", max_ppl_ratio), ("forgetting", max_forgetting)):
        if limit is None:
            continue
        mean = row[key]["mean"]
        if mean is None:
            return None
        over = max(over, mean - limit)
    return over


def recommend(results: dict, max_ppl_increase: float | None = None, max_forgetting: float | None = None) -> dict:
    """Best configuration within the budget (highest mean learning, the budget applied to the means over seeds),
    the ones indistinguishable from it, or, when nothing fits, the closest configuration."""
    if max_ppl_increase is None and max_forgetting is None:
        raise CurloraError("give a budget: --max-ppl-increase 5% and/or --max-forgetting 0.01")
    max_ratio = None if max_ppl_increase is None else 1.0 + max_ppl_increase
    rows = [r for r in results["configurations"] if r["learning"]["mean"] is not None]
    scored = [(r, _excess(r, max_ratio, max_forgetting)) for r in rows]
    within = [r for r, e in scored if e is not None and e <= 1e-12]
    budget = {"max_ppl_ratio": max_ratio, "max_forgetting": max_forgetting}
    if not within:
        candidates = [(e, r) for r, e in scored if e is not None]
        if not candidates:
            raise CurloraError("no configuration has the values this budget needs (all diverged or one task)")
        _, closest = min(candidates, key=lambda t: (t[0], -t[1]["learning"]["mean"]))
        return {"met": False, "budget": budget, "best": closest, "alternatives": [], "results": results}
    best = max(within, key=lambda r: r["learning"]["mean"])
    by_seed = _learning_by_seed(results)
    alternatives = [r["label"] for r in within if r is not best
                    and compare(by_seed.get(best["label"], {}), by_seed.get(r["label"], {}), True) != "better"]
    return {"met": True, "budget": budget, "best": best, "alternatives": alternatives, "results": results}


def _learning_by_seed(results: dict) -> dict[str, dict[int, float]]:
    ref = {r["seed"]: r["avg_acc"] for r in results["runs"] if r["label"] == results["reference"]}
    out: dict[str, dict[int, float]] = {}
    for r in results["runs"]:
        if r["avg_acc"] is not None and r["seed"] in ref and ref[r["seed"]] is not None:
            out.setdefault(r["label"], {})[r["seed"]] = r["avg_acc"] - ref[r["seed"]]
    return out


def bench_command(results: dict, row: dict) -> str:
    """The `curlora bench` line that reruns this configuration alone, with the sweep's seeds."""
    bench = results["space"]["bench"]
    parts = ["curlora", "bench", "--preset", bench.get("preset", "quick"), "--methods", row["spec"],
             "--epochs", str(row["epochs"]), "--seeds", ",".join(map(str, results["space"]["seeds"]))]
    for key in _BENCH_FLAGS:
        if key in bench:
            parts += ["--" + key.replace("_", "-"), str(bench[key])]
    return shlex.join(parts)


def python_only_options(results: dict) -> dict:
    """Bench options of the sweep that `curlora bench` has no flag for (set them through make_config)."""
    return {k: v for k, v in results["space"]["bench"].items() if k not in _BENCH_FLAGS and k != "preset"}


def adapter_config(sweep_dir: str | Path, results: dict, row: dict) -> dict | None:
    """The PEFT adapter config the sweep's run of this configuration saved (None for methods without one)."""
    runs = [r for r in results["runs"] if r["label"] == row["label"]]
    for run in runs:
        found = sorted((Path(sweep_dir) / run["run_dir"]).glob("runs/*/seed-*/stage-*/adapter/adapter_config.json"))
        if found:
            return json.loads(found[-1].read_text())
    return None
