"""Host (Python + dispatcher) cost of one adapted layer's eager forward + backward: floor vs PEFT LoRA vs CURLoRA.

Shapes are tiny (width 64, batch 1, a few tokens, one thread), so the arithmetic is negligible and what is timed
is the host work of dispatching the step, which is what bounds an eager step on a GPU (docs/BENCHMARKS.md).
Two scenarios, each timed in one process with the variants interleaved round-robin (median over rounds of CPU
time of this thread, so that time the VM spends elsewhere is not counted):

- ``layer``: one nn.Linear(64, 64) called directly, input requiring grad, output gradient given (no loss);
- ``model``: a tiny Llama (`curlora.testing.tiny_llama`, hidden 64) with q/k/v adapted, inputs_embeds
  requiring grad; the per-layer cost is (variant − floor) / adapted layers;
- ``autocast``: the same model in float32 under bf16 autocast (HF Trainer's `bf16=True` on a float32 model).

Variants: ``floor`` (frozen base only), ``lora`` (PEFT LoRA r=16, `curlora.lora_config`), ``curlora`` (this
checkout; in the model also ``curlora-ungrouped``: q/k/v groups unlinked). With ``--baseline REV`` the CURLoRA
layer and q/k/v group of git revision REV (`curlora/tuner/layer.py`, `group.py`, loaded from git into this same
process; the rest of the library is this checkout's) run as ``base-curlora`` (``base-curlora-ungrouped``) beside
them, for a before/after in one process. Weights are bf16 (U float32, as on the GPU) unless --dtype says else.

    PYTHONPATH=src python perf/host_bench.py --scenarios layer,model,autocast --baseline e02a4af \
        --out docs/perf/host-overhead/cpu-vs-e02a4af.json  # ~2 min
    PYTHONPATH=src python perf/host_bench.py --profile    # also print torch.profiler's op table for curlora
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

TARGETS = ["q_proj", "k_proj", "v_proj"]
REPO = Path(__file__).resolve().parents[1]


def load_baseline(rev: str):
    """(CURLoRALinear class, link_shared_input_groups) of `rev`'s layer.py and group.py, as modules of their own."""

    def load(path: str, name: str, patch=lambda s: s):
        text = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=REPO, check=True, capture_output=True, text=True)
        spec = importlib.util.spec_from_loader(name, loader=None)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # its autograd Functions are looked up by module name
        exec(compile(patch(text.stdout), f"{rev}:{path}", "exec"), module.__dict__)  # noqa: S102 (our own git history)
        return module

    layer = load("src/curlora/tuner/layer.py", "_host_bench_base_layer")
    group = load(
        "src/curlora/tuner/group.py",
        "_host_bench_base_group",
        lambda s: s.replace("curlora.tuner.layer import", "_host_bench_base_layer import"),
    )
    return layer.CURLoRALinear, group.link_shared_input_groups


def adapt(base: nn.Module, variant: str, rank: int, targets: list[str], baseline) -> nn.Module:
    import peft

    import curlora
    from curlora.tuner.group import link_shared_input_groups
    from curlora.tuner.layer import CURLoRALinear

    model = copy.deepcopy(base).requires_grad_(False)
    if variant == "lora":
        return peft.get_peft_model(model, curlora.lora_config(rank, 1.0, target_modules=targets)).train()
    if variant == "floor":
        return model.train()
    model = peft.get_peft_model(model, curlora.CURLoRAConfig(r=rank, target_modules=targets)).train()
    layers = [m for m in model.modules() if isinstance(m, CURLoRALinear)]
    for layer in layers:  # U = 0 at creation: any non-zero U makes every product count
        layer.curlora_U["default"].data.normal_(std=1e-3)
    if variant.startswith("base-"):
        cls, link = baseline
        for layer in layers:
            layer.__class__ = cls
            layer._shared_input_group = None
        link(model, cls)
    else:
        link_shared_input_groups(model, CURLoRALinear)  # as injected (a no-op where there is no q/k/v block)
    if variant.endswith("-ungrouped"):
        for layer in layers:
            layer._shared_input_group = None
    return model


class _One(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.q_proj = nn.Linear(width, width, bias=False)


def scenario_layer(args, dtype, variants, baseline):
    torch.manual_seed(0)
    base = _One(args.width).to(dtype)
    layers = {v: adapt(base, v, args.rank, ["q_proj"], baseline) for v in variants}
    layers = {v: m.get_submodule("base_model.model.q_proj" if v != "floor" else "q_proj") for v, m in layers.items()}
    x0 = torch.randn(args.batch, args.seq, args.width, dtype=dtype)
    grad = torch.randn_like(x0)

    def step(layer):
        x = x0.detach().requires_grad_(True)
        torch.autograd.backward(layer(x), grad)

    return {v: (lambda m=m: step(m)) for v, m in layers.items()}, 1


def scenario_model(args, dtype, variants, baseline, autocast: bool = False):
    import contextlib

    from curlora.testing import tiny_llama

    base = tiny_llama(num_layers=args.layers, hidden_size=args.width, dtype=dtype).model  # no LM head
    models = {v: adapt(base, v, args.rank, TARGETS, baseline) for v in variants}
    emb = torch.randn(args.batch, args.seq, args.width, dtype=dtype)

    def step(model):
        x = emb.detach().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
            out = model(inputs_embeds=x).last_hidden_state
        out[:, -1, :2].float().sum().backward()

    return {v: (lambda m=m: step(m)) for v, m in models.items()}, 3 * args.layers


def timed(runs: dict, rounds: int, inner: int, warmup: int) -> dict[str, float]:
    """Median over rounds of one step's thread CPU time in µs, the variants interleaved (order rotated)."""
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    samples = {k: [] for k in runs}
    names = list(runs)
    gc.collect()
    gc.disable()
    try:
        for i in range(rounds):
            for k in names[i % len(names) :] + names[: i % len(names)]:
                fn = runs[k]
                start = time.thread_time()
                for _ in range(inner):
                    fn()
                samples[k].append((time.thread_time() - start) / inner * 1e6)
    finally:
        gc.enable()
    return {k: statistics.median(v) for k, v in samples.items()}


def summarise(us: dict[str, float], adapted: int) -> dict:
    floor, lora_extra = us["floor"], us["lora"] - us["floor"]
    out = {"step_us": {k: round(v, 2) for k, v in us.items()}, "adapted_layers": adapted, "per_layer_extra_us": {}}
    for k, v in us.items():
        if k == "floor":
            continue
        out["per_layer_extra_us"][k] = round((v - floor) / adapted, 2)
        out.setdefault("x_floor", {})[k] = round(v / floor, 4)
        if k != "lora":
            out.setdefault("x_lora", {})[k] = round(v / us["lora"], 4)
            out.setdefault("extra_x_lora_extra", {})[k] = round((v - floor) / lora_extra, 4)
    return out


def profile(runs: dict, name: str) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for _ in range(50):
        runs[name]()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(200):
            runs[name]()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30), file=sys.stderr)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenarios", default="layer,model")
    p.add_argument("--dtypes", default="bfloat16,float32", help="the layer scenario's; the model runs the first")
    p.add_argument("--baseline", default=None, help="git revision whose CURLoRA layer/group to time alongside")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=4)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--layers", type=int, default=4, help="decoder layers of the model scenario")
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    baseline = load_baseline(args.baseline) if args.baseline else None
    base_variants = ["base-curlora"] if baseline else []
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    report = {
        "schema": "curlora-host-bench/1",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
        "commit": commit.stdout.strip(),
        "baseline": args.baseline,
        "timing": "median over rounds of thread CPU time per step (variants interleaved), microseconds",
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "profile")},
        "results": {},
    }
    dtypes = args.dtypes.split(",")
    for scenario in args.scenarios.split(","):
        for dtype_name in dtypes if scenario == "layer" else ["float32"] if scenario == "autocast" else dtypes[:1]:
            dtype = getattr(torch, dtype_name)
            if scenario == "layer":
                variants = ["floor", "lora", "curlora", *base_variants]
                runs, adapted = scenario_layer(args, dtype, variants, baseline)
                rounds, inner = args.rounds, 20
            else:
                variants = ["floor", "lora", "curlora", "curlora-ungrouped"]
                variants += [*base_variants, "base-curlora-ungrouped"] if baseline else []
                runs, adapted = scenario_model(args, dtype, variants, baseline, autocast=scenario == "autocast")
                rounds, inner = args.rounds, 2
            key = f"{scenario}-{dtype_name}"
            report["results"][key] = summarise(timed(runs, rounds, inner, warmup=20), adapted)
            print(key, json.dumps(report["results"][key]["per_layer_extra_us"]), file=sys.stderr)
            if args.profile:
                profile(runs, "curlora")
    text = json.dumps(report, indent=2, allow_nan=False)
    print(text)
    if args.out:
        from curlora.files import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    return report


if __name__ == "__main__":
    main()
