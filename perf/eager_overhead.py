"""Host (Python) overhead of the adapters in eager mode, on CPU: CURLoRA vs PEFT LoRA vs the frozen floor.

A tiny Llama (hidden 64, tiny batch) makes the arithmetic negligible, so a training step's time is the host
work of dispatching it. Each variant runs forward + backward on its own copy of the same model, in one process,
interleaved round-robin; the adapters' cost per adapted layer is (variant − floor) / adapted layers. The floor
is the frozen model with activation gradients (inputs_embeds require grad), as in perf/step_bench.py;
curlora-ungrouped is the library with its q/k/v groups unlinked (one autograd node per projection).

    python perf/eager_overhead.py                       # ~1 min; --out overhead.json for the numbers as JSON
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import time
from pathlib import Path

import torch

TARGETS = ["q_proj", "k_proj", "v_proj"]


def build(variant: str, base, rank: int):
    import peft

    import curlora

    model = copy.deepcopy(base)
    model.requires_grad_(False)
    if variant == "lora":
        model = peft.get_peft_model(model, curlora.lora_config(rank, 1.0, target_modules=TARGETS))
    elif variant.startswith("curlora"):
        model = peft.get_peft_model(model, curlora.CURLoRAConfig(r=rank, target_modules=TARGETS))
        if variant == "curlora-ungrouped":  # each projection its own autograd node (the per-layer path)
            for module in model.modules():
                if isinstance(module, curlora.CURLoRALayer):
                    module._shared_input_group = None
    return model.train()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=8)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--steps", type=int, default=30, help="timed rounds")
    p.add_argument("--inner", type=int, default=5, help="steps per timing")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from curlora.testing import tiny_llama

    base = tiny_llama(num_layers=args.layers)
    emb = torch.randn(args.batch, args.seq, base.config.hidden_size)
    variants = ["floor", "lora", "curlora", "curlora-ungrouped"]
    models = {v: build(v, base, args.rank) for v in variants}

    def step(model):
        x = emb.detach().requires_grad_(True)
        out = model(inputs_embeds=x).logits
        out[:, -1, :2].sum().backward()

    def infer(model):
        with torch.no_grad():
            model(inputs_embeds=emb)

    runs = {f"train-{v}": (lambda m=m: step(m)) for v, m in models.items()}
    runs |= {f"infer-{v}": (lambda m=m: infer(m)) for v, m in models.items()}
    for fn in runs.values():
        for _ in range(3):
            fn()
    times = {k: [] for k in runs}
    gc.disable()
    try:
        names = list(runs)
        for i in range(args.steps):
            for k in names[i % len(names) :] + names[: i % len(names)]:
                start = time.perf_counter()
                for _ in range(args.inner):
                    runs[k]()
                times[k].append((time.perf_counter() - start) / args.inner)
    finally:
        gc.enable()
    med = {k: statistics.median(v) for k, v in times.items()}
    adapted = 3 * args.layers
    report = {"schema": "curlora-eager-overhead/1", "torch": torch.__version__, "layers": args.layers,
              "adapted_layers": adapted, "ms": {k: 1e3 * v for k, v in med.items()}}  # fmt: skip
    for mode in ("train", "infer"):
        floor = med[f"{mode}-floor"]
        for v in ("lora", "curlora", "curlora-ungrouped"):
            report[f"{mode}_{v}_x_floor"] = med[f"{mode}-{v}"] / floor
            report[f"{mode}_{v}_us_per_layer"] = 1e6 * (med[f"{mode}-{v}"] - floor) / adapted
        report[f"{mode}_curlora_x_lora"] = med[f"{mode}-curlora"] / med[f"{mode}-lora"]
        report[f"{mode}_curlora_overhead_x_lora_overhead"] = (med[f"{mode}-curlora"] - floor) / (
            med[f"{mode}-lora"] - floor
        )
    print(json.dumps(report, indent=2))
    if args.out:
        from curlora.files import atomic_write_json, finite_or_null

        atomic_write_json(args.out, finite_or_null(report))
    return report


if __name__ == "__main__":
    main()
