"""Pareto fronts that respect seed noise.

Each configuration has one value per seed for every objective. Two configurations are compared on the seeds they
share, through the per-seed (paired) differences d_s = a_s - b_s:

* better / worse: the 95 % Student-t interval of the mean difference, mean(d) ± t(0.975, n-1)·sd(d)/√n,
  lies entirely on one side of zero (with a single shared seed there is no noise estimate: the sign decides);
* tie: every difference is zero (to 1e-12), e.g. head_only's perplexity ratio of exactly 1;
* unclear: anything else — the difference is within the noise.

A dominates B when it is better on at least one objective and better or tied on every other one; "unclear" on any
objective never counts as dominance. The front is the set of configurations nobody dominates. Ties are compared
like the classical definition (a tie plus a clear win dominates), so exact duplicates stay on the front together.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

# two-sided 95 % Student-t quantiles t(0.975, df), df = 1..30 (standard table values)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
TIE_TOL = 1e-12


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


def compare(a: Mapping[int, float], b: Mapping[int, float], higher_is_better: bool) -> str:
    """'better', 'worse', 'tie' or 'unclear' for a against b, on their shared seeds."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return "unclear"
    sign = 1.0 if higher_is_better else -1.0
    diffs = [sign * (a[s] - b[s]) for s in seeds]
    if all(abs(d) <= TIE_TOL for d in diffs):
        return "tie"
    if len(diffs) == 1:
        return "better" if diffs[0] > 0 else "worse"
    _, low, high = paired_interval(diffs)
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "unclear"


def dominates(a: Sequence[Mapping[int, float]], b: Sequence[Mapping[int, float]], higher: Sequence[bool]) -> bool:
    """Whether a dominates b beyond the noise; a and b hold one {seed: value} per objective."""
    verdicts = [compare(x, y, h) for x, y, h in zip(a, b, higher, strict=True)]
    return "better" in verdicts and all(v in ("better", "tie") for v in verdicts)


def front(points: Mapping[str, Sequence[Mapping[int, float]]], higher: Sequence[bool]) -> dict[str, list[str]]:
    """For every point, the labels of the points that dominate it; the front is those with an empty list.
    Points with no values on some objective are left out (they cannot be placed)."""
    usable = {k: v for k, v in points.items() if all(len(obj) for obj in v)}
    return {k: [o for o in usable if o != k and dominates(usable[o], v, higher)] for k, v in usable.items()}
