"""The continual-learning bench: one model through a sequence of tasks, per method and seed (see runner.py)."""

from curlora.recipes.bench.config import BenchConfig, make_config
from curlora.recipes.bench.runner import Bench
from curlora.recipes.common import Reporter, environment, resolve_device

__all__ = ["Bench", "BenchConfig", "Reporter", "environment", "make_config", "resolve_device"]
