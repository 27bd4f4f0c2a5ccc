"""A synthetic kind-"study" results.json (fixtures: conftest.py): realistic shapes (three orders + the paper's
sequence, five seeds, two adapter lrs), with predictions that reproduce every stored accuracy exactly."""

from __future__ import annotations

import copy
import math
import zlib

import numpy as np

FAMILIES = ["curlora-16", "lora-16", "lora-1:targets=v_proj", "head_only", "probe"]
LRS = [0.00025, 0.001]
HEAD_LR = 0.01
# task -> (labels, eval size, eval share of each class)
TASKS = {
    "mrpc": (["not paraphrase", "paraphrase"], 120, [0.32, 0.68]),
    "sst2": (["negative", "positive"], 150, [0.49, 0.51]),
    "rte": (["entailment", "not entailment"], 90, [0.5, 0.5]),
    "domain": (["world", "sports", "business"], 100, [0.3, 0.4, 0.3]),
    "amazon": (["negative", "positive"], 110, [0.45, 0.55]),
    "sentiment140": (["negative", "positive"], 80, [0.5, 0.5]),
}
SETTINGS = [
    ("order-a", "main", ["mrpc", "sst2", "rte", "domain", "amazon"]),
    ("order-b", "main", ["amazon", "domain", "rte", "sst2", "mrpc"]),
    ("order-c", "main", ["rte", "mrpc", "amazon", "sst2", "domain"]),
    ("paper", "paper", ["mrpc", "sst2", "sentiment140"]),
]
# family -> gain over the probe right after a stage, accuracy lost per later stage (at lr 1e-3; 2.5e-4 learns 70 %)
EFFECTS = {
    "curlora-16": (0.10, 0.005),
    "lora-16": (0.14, 0.04),
    "lora-1:targets=v_proj": (0.08, 0.02),
    "head_only": (0.0, 0.0),
    "probe": (0.0, 0.0),
}


def _rng(*parts) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(str(p).encode()) for p in parts])


def _eval_labels(task: str) -> str:
    labels, n, share = TASKS[task]
    counts = [round(s * n) for s in share]
    counts[-1] = n - sum(counts[:-1])
    digits = [str(k) for k, c in enumerate(counts) for _ in range(c)]
    _rng("labels", task).shuffle(digits)
    return "".join(digits)


def _task_info(task: str) -> dict:
    labels, n, _ = TASKS[task]
    ev = _eval_labels(task)
    train = _rng("train", task).multinomial(600, [0.5] * 2 if len(labels) == 2 else [1 / 3] * 3)
    return {"name": task, "kind": "single", "labels": labels, "n_train": 600, "n_val": 200, "n_eval": n,
            "train_counts": {lab: int(c) for lab, c in zip(labels, train, strict=True)},
            "eval_counts": {lab: ev.count(str(k)) for k, lab in enumerate(labels)}, "eval_labels": ev}


def _probe_acc(task: str, seed: int) -> float:
    return 0.62 + 0.1 * _rng("probe", task, seed).random()


def _pred(labels: str, correct: np.ndarray) -> str:
    n_classes = int(max(labels)) + 1 if labels else 2
    return "".join(q if ok else str((int(q) + 1) % max(n_classes, 2)) for q, ok in zip(labels, correct, strict=True))


def _run(family: str, lr: float, seed: int, setting: str, order: list[str], effects: dict, lr_effects: dict) -> dict:
    gain, forget = effects[family]
    scale = 1.0 if lr == 0.001 or family in ("probe", "head_only") else 0.7
    test_delta, val_delta = lr_effects.get((family, lr), (0.0, 0.0))
    rng = _rng(family, lr, seed, setting)
    n = len(order)
    acc = [[None] * n for _ in range(n)]
    val = [[None] * n for _ in range(n)]
    pred = [[None] * n for _ in range(n)]
    for j, task in enumerate(order):
        labels = _eval_labels(task)
        size = len(labels)
        order_of_correct = _rng("examples", family, lr, seed, setting, task).permutation(size)
        diag = _probe_acc(task, seed) + gain * scale + test_delta + rng.normal(0, 0.01 if gain else 0.0)
        for i in range(j, n):
            a = min(max(diag - forget * (i - j) + (rng.normal(0, 0.005) if forget else 0.0), 0.0), 1.0)
            k = round(a * size)
            correct = np.zeros(size, dtype=bool)
            correct[order_of_correct[:k]] = True  # nested: an example stays correct until forgotten
            acc[i][j] = k / size
            pred[i][j] = _pred(labels, correct)
            val[i][j] = min(1.0, acc[i][j] - test_delta + val_delta + rng.normal(0, 0.003))
    adapter = family not in ("probe", "head_only")
    method = family.split("-")[0] if adapter else family
    return {
        "label": f"{family}:lr={lr:g}", "family": family, "method": method,
        "rank": int(family.split("-")[1].split(":")[0]) if adapter else None, "lr": lr, "head_lr": HEAD_LR,
        "seed": seed, "acc": acc, "val_acc": val, "pred": pred, "ppl_before": 20.0,
        "ppl_after": 20.0 * (1 + (0.05 * scale + rng.normal(0, 0.005) if adapter else 0.0)),
        "diverged": False,
        "delta_norm_ratio": {"mean": 0.002 * scale, "max": 0.004} if adapter else None,
        "kl": {"kl": 0.02 * scale + abs(rng.normal(0, 0.002)), "kl_max_token": 1.0, "tokens": 1000} if adapter else
        {"kl": 0.0, "kl_max_token": 0.0, "tokens": 1000},
        "trainable_params": {"curlora": 36864, "lora": 294912}.get(method, 0) if adapter else 0,
        "head_params": 1538, "adapter_bytes": 100000 if adapter else None, "wall_s": 60.0,
        **({"probe": [{"l2": 1.0, "cv_acc": {"mrpc": 0.7}}]} if family == "probe" else {}),
    }


def make_study(effects: dict | None = None, lr_effects: dict | None = None, seeds=(0, 1, 2, 3, 4),
               clone: dict | None = None) -> dict:
    """The study dict. effects: family -> (gain, forgetting per stage); lr_effects: (family, lr) -> (test shift,
    validation shift); clone: family -> family whose runs it copies exactly."""
    effects = {**EFFECTS, **(effects or {})}
    lr_effects = lr_effects or {}
    design_settings = [{"name": n, "group": g, "title": f"{n} sequence", "order": o} for n, g, o in SETTINGS]
    bench = {"model": "HuggingFaceTB/SmolLM2-135M", "epochs": 1, "alpha": 1.0}
    settings = []
    for name, group, order in SETTINGS:
        runs = []
        for family in FAMILIES:
            lrs = [HEAD_LR] if family in ("probe", "head_only") else LRS
            for lr in lrs:
                for seed in seeds:
                    source = (clone or {}).get(family, family)
                    run = _run(source, lr, seed, name, order, effects, lr_effects)
                    if source != family:
                        run = {**copy.deepcopy(run), "family": family, "label": f"{family}:lr={lr:g}"}
                    runs.append(run)
        settings.append({"name": name, "group": group, "order": order, "bench": bench,
                         "suite": {"name": "continual", "tasks": order, "ppl_name": "wikitext-2-test",
                                   "notes": ["synthetic data"], "task_info": [_task_info(t) for t in order]},
                         "environment": {"device": "NVIDIA H200", "torch": "2.9"}, "runs": runs})
    return {
        "schema_version": 1, "kind": "study", "created": "2025-01-01T00:00:00+00:00", "commit": "abc1234",
        "design": {"title": "Synthetic study", "seeds": list(seeds), "head_lr": HEAD_LR, "lrs": LRS,
                   "methods": FAMILIES, "reference": "probe",
                   "comparisons": [["curlora-16", "lora-16"], ["curlora-16", "lora-1:targets=v_proj"],
                                   ["curlora-16", "head_only"], ["lora-16", "head_only"]],
                   "settings": design_settings, "bench": bench},
        "settings": settings,
    }


FINDINGS = """Final accuracy of curlora-16: {{main.family.curlora-16.acc.mean}}; probe: {{main.family.probe.acc.mean}}.
CURLoRA vs LoRA: {{main.cmp.curlora-16.vs.lora-16.acc.mean}} ({{main.cmp.curlora-16.vs.lora-16.acc.verdict}}).
"""


assert math.isclose(sum(TASKS["mrpc"][2]), 1.0)
