"""Small statistics shared by the sweep's Pareto fronts and the study report: Student-t intervals of paired
differences, a verdict from such an interval, and a bootstrap over evaluation examples.

Paired interval: for per-unit differences d (one per seed, or per (setting, seed)), the 95 % Student-t interval of
their mean is mean(d) ± t(0.975, n-1)·sd(d)/√n with the sample sd (ddof = 1). No scipy: t(0.975, df) comes from the
standard table for df ≤ 30 and a Cornish-Fisher expansion above (error below 1e-3).

Bootstrap: :func:`bootstrap_diff_interval` resamples each task's evaluation examples with replacement (the same
draws for every run and both sides of a comparison, seeded by the task's name so that every comparison sees the
same resamples) and recomputes a difference of mean accuracies; the interval is the 2.5/97.5 percentiles.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "INDISTINGUISHABLE",
    "TIE_TOL",
    "bootstrap_diff_interval",
    "paired_interval",
    "paired_stats",
    "t975",
    "verdict",
]

# two-sided 95 % Student-t quantiles t(0.975, df), df = 1..30 (standard table values)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
TIE_TOL = 1e-12
INDISTINGUISHABLE = "indistinguishable at this power"


def t975(df: int) -> float:
    if df < 1:
        raise ValueError("df must be >= 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964  # Cornish-Fisher expansion around the normal quantile, accurate to 1e-3 above df = 30
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def paired_interval(diffs: Sequence[float]) -> tuple[float, float, float] | None:
    """(mean, low, high) of the 95 % t interval of the mean of paired differences; None below two values."""
    n = len(diffs)
    if n < 2:
        return None
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = t975(n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def paired_stats(diffs: Sequence[float]) -> dict[str, Any]:
    """{"n", "mean", "sd", "low", "high"} of paired differences; sd/low/high are None below two values and mean is
    None without any."""
    n = len(diffs)
    mean = math.fsum(diffs) / n if n else None
    sd = math.sqrt(math.fsum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else None
    interval = paired_interval(list(diffs))
    low, high = (interval[1], interval[2]) if interval else (None, None)
    return {"n": n, "mean": mean, "sd": sd, "low": low, "high": high}


def verdict(a: str, b: str, stats: Mapping[str, Any], higher_is_better: bool) -> str:
    """"a beats b" / "b beats a" when the interval of mean(a − b) excludes zero (in the metric's good direction),
    else "indistinguishable at this power" (also with fewer than two units, or when every difference is zero)."""
    low, high, sd = stats.get("low"), stats.get("high"), stats.get("sd")
    if low is None or high is None or (sd is not None and sd <= TIE_TOL and abs(stats["mean"]) <= TIE_TOL):
        return INDISTINGUISHABLE
    if low > 0:
        return f"{a} beats {b}" if higher_is_better else f"{b} beats {a}"
    if high < 0:
        return f"{b} beats {a}" if higher_is_better else f"{a} beats {b}"
    return INDISTINGUISHABLE


def _weights(task: str, n: int, n_boot: int, seed: int) -> Any:
    """(n_boot, n) counts: how often each example is drawn in each resample; depends only on (task, n, seed)."""
    import numpy as np

    rng = np.random.default_rng([seed, zlib.crc32(task.encode("utf-8")), n])
    idx = rng.integers(0, n, size=(n_boot, n))
    return np.stack([np.bincount(row, minlength=n) for row in idx]).astype(np.float64)


def bootstrap_diff_interval(
    side_a: Sequence[Mapping[str, Sequence[bool]]],
    side_b: Sequence[Mapping[str, Sequence[bool]]],
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile 95 % interval of mean_units(avg acc of a) − mean_units(avg acc of b) over example resamples.

    side_a[u] and side_b[u] are the two runs of unit u, each {task name: correct/incorrect per eval example}; a
    run's average accuracy is the mean over its tasks. Every resample draws each task's example indices once, used
    for every run of both sides. None without units."""
    import numpy as np

    if not side_a or len(side_a) != len(side_b):
        return None
    units = len(side_a)
    # the statistic is linear in the per-example correctness, so fold both sides and all units into one vector per
    # task: D_t = Σ_u (±1) correct_u,t / (|tasks of u| · units); a resample's value is Σ_t W_t·D_t / n_t
    fold: dict[str, Any] = {}
    for runs, sign in ((side_a, 1.0), (side_b, -1.0)):
        for run in runs:
            for task, correct in run.items():
                vec = np.asarray(correct, dtype=np.float64) * (sign / (len(run) * units))
                if task in fold and fold[task].shape != vec.shape:
                    raise ValueError(f"task {task}: runs disagree on the number of eval examples")
                fold[task] = fold[task] + vec if task in fold else vec
    total = np.zeros(n_boot)
    for task in sorted(fold):
        d = fold[task]
        total += _weights(task, d.size, n_boot, seed) @ d / d.size
    low, high = np.percentile(total, [2.5, 97.5])
    return float(low), float(high)
