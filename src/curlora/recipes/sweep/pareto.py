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

from collections.abc import Mapping, Sequence

from curlora.reports.stats import TIE_TOL, paired_interval, t975

# the t interval lives with the study report's statistics; re-exported here for the sweep's modules and tests
__all__ = ["TIE_TOL", "compare", "dominates", "front", "paired_interval", "t975"]


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
