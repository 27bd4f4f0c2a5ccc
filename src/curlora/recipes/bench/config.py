"""The bench's settings: a dataclass, filled from a preset (`presets.py`) and CLI overrides, checked once."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from curlora.errors import CurloraError
from curlora.methods import parse_method
from curlora.models.quantize import check_quantize
from curlora.recipes.bench.presets import PRESETS
from curlora.recipes.common import check_options

_LATER_OPTIONS = {"n_val": 0, "task_order": None, "kl_max_tokens": None}


@dataclass
class BenchConfig:
    preset: str = "quick"
    model: str = "smollm2-135m"
    suite: str = "builtin"
    data_dir: str | None = None
    methods: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    n_train: int | None = None
    n_eval: int | None = None
    n_val: int = 0  # validation rows carved from each task's training rows (fixed split) for model selection
    task_order: list[str] | None = None  # a subset of the suite's tasks, in this order; None: the suite's order
    epochs: int = 1
    batch_size: int = 8
    eval_batch_size: int = 64
    lr: float = 1e-3
    head_lr: float | None = None  # the classification heads' peak lr; None: each method's lr (the paper's setup)
    warmup_steps: int | None = None
    warmup_ratio: float | None = 0.1
    weight_decay: float = 0.0
    max_length: int = 64
    ppl_max_length: int = 256
    ppl_stride: int = 256
    ppl_max_tokens: int | None = None
    kl_max_tokens: int | None = None  # KL(base || trained) on this many perplexity tokens; None: not measured
    alpha: float = 1.0
    sampling: str = "inverted"
    target_modules: list[str] | None = None
    device: str = "auto"
    dtype: str = "auto"
    quantize: str | None = None  # "4bit" / "8bit": a bitsandbytes base (curlora.models.quantize)

    def __post_init__(self) -> None:
        check_options(self)

    def result_key(self) -> dict:
        """The fields that change the numbers (a resumed run must match them); device placement excluded."""
        d = dataclasses.asdict(self)
        for k in ("device", "eval_batch_size"):
            d.pop(k)
        # options added later leave the key when at their default, so folders written before them still resume
        for k, default in _LATER_OPTIONS.items():
            if d[k] == default:
                d.pop(k)
        return d


def make_config(preset: str = "quick", **overrides) -> BenchConfig:
    if preset not in PRESETS:
        raise CurloraError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    values = dict(PRESETS[preset])
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(values) - {f.name for f in dataclasses.fields(BenchConfig)}
    if unknown:
        raise CurloraError(f"unknown bench option(s): {', '.join(sorted(unknown))}")
    config = BenchConfig(preset=preset, **values)
    specs = [parse_method(m) for m in config.methods]
    if not specs:
        raise CurloraError("no methods given; e.g. --methods curlora-16,lora-16,head_only")
    if len({s.label for s in specs}) != len(specs):
        raise CurloraError("a method is listed twice; list each once")
    if not config.seeds:
        raise CurloraError("no seeds given; e.g. --seeds 0,1,2")
    config.quantize = check_quantize(config.quantize)
    if config.quantize and any(s.method == "full" for s in specs):
        raise CurloraError(f"--quantize {config.quantize} freezes the base; drop 'full' from --methods")
    return config
