"""`curlora sweep`: the accuracy-vs-forgetting trade-off over a space of bench configurations (docs/SWEEP.md)."""

from curlora.recipes.sweep.pareto import compare, dominates, front, paired_interval
from curlora.recipes.sweep.runner import Options, SweepReporter, collect, failure_message, run_sweep
from curlora.recipes.sweep.space import Configuration, Space, load_space, make_space, parse_lrs

__all__ = [
    "Configuration",
    "Options",
    "Space",
    "SweepReporter",
    "collect",
    "compare",
    "dominates",
    "failure_message",
    "front",
    "load_space",
    "make_space",
    "paired_interval",
    "parse_lrs",
    "run_sweep",
]
