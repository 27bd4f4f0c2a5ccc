"""`curlora sft` settings: the dataclass, its checks, and the method list parser."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from curlora.errors import CurloraError
from curlora.methods import MethodSpec, parse_method
from curlora.models.quantize import check_quantize
from curlora.recipes.common import check_options
from curlora.recipes.sft.qa import DEFAULT_TEMPLATE, NO_ANSWER

SFT_METHODS = ("none", "curlora", "lora")
DEFAULT_LR = {"curlora": 1e-3, "lora": 1e-3}  # the same for both: a fair comparison of forgetting


@dataclass
class SFTRecipeConfig:
    """Settings of `curlora sft`; every field changes the numbers except `device`, `eval_batch_size`, `save_steps`,
    `save_total_limit` and `logging_steps`."""

    data: str = ""
    model: str = "smollm2-135m"
    data_split: str = "validation"
    methods: list[str] = field(default_factory=lambda: ["curlora"])
    rank: int = 16
    alpha: float = 1.0
    sampling: str = "inverted"
    target_modules: list[str] | None = None
    lr: float | None = None  # None: DEFAULT_LR of the method
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 8  # the global batch: split evenly over the processes of accelerate launch / torchrun
    grad_accum: int = 1
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_length: int = 512
    template: str = DEFAULT_TEMPLATE
    keep_unanswerable: bool = False
    no_answer: str = NO_ANSWER
    eval_articles: float = 1
    train_articles: int | None = None
    max_train_questions: int | None = None
    eval_questions: int | None = None
    max_new_tokens: int = 32
    eval_batch_size: int = 32
    ppl_max_tokens: int | None = 16384
    ppl_max_length: int = 512
    ppl_stride: int = 256
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    quantize: str | None = None  # "4bit" / "8bit": a bitsandbytes base (curlora.models.quantize)
    save_steps: int = 50
    save_total_limit: int | None = 2
    logging_steps: int = 10

    _NOT_RESULT = ("device", "eval_batch_size", "save_steps", "save_total_limit", "logging_steps")

    def result_key(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in self._NOT_RESULT:
            d.pop(k, None)
        return json.loads(json.dumps(d))

    def validate(self) -> None:
        self.quantize = check_quantize(self.quantize)
        if not self.data:
            raise CurloraError("no data given; pass --data PATH/TO/dev-v2.0.json (or a hub id such as squad_v2)")
        check_options(self)
        if not 1 <= self.ppl_stride <= self.ppl_max_length:
            raise CurloraError(f"ppl_stride must be between 1 and ppl_max_length ({self.ppl_max_length})")
        if self.max_new_tokens >= self.max_length:
            raise CurloraError(f"max_new_tokens ({self.max_new_tokens}) must be below max_length ({self.max_length})")
        parse_sft_methods(self.methods, self.rank)


def parse_sft_methods(methods: list[str], rank: int) -> list[MethodSpec]:
    """``none`` (base model), ``curlora``/``lora`` (rank `rank`) or ``curlora-8``, ``lora-16:lr=1e-4``, ..."""
    if not methods:
        raise CurloraError("no methods given; e.g. --method none,curlora,lora")
    specs = []
    for raw in methods:
        spec = raw.strip().lower()
        if spec in ("none", "base"):
            specs.append(MethodSpec(label="none", method="none"))
            continue
        name = spec.split(":", 1)[0].split("-", 1)[0]
        if name not in ("curlora", "lora"):
            raise CurloraError(f"unknown method {raw!r} for sft; use none, curlora, lora (or curlora-R, lora-R)")
        if "-" not in spec.split(":", 1)[0]:
            head, sep, opts = spec.partition(":")
            spec = f"{head}-{rank}{sep}{opts}"
        specs.append(parse_method(spec))
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise CurloraError(f"a method is listed twice ({', '.join(labels)}); list each once")
    return specs
