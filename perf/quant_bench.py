"""CURLoRA on a quantized base against QLoRA (PEFT LoRA on the same 4-bit base) and the 4-bit floor, one step.

The model is Mistral-7B-shaped (by default), random-init like perf/step_bench.py (normal, std 0.02; no
download): the decoder backbone is built in bf16 on the device, and every nn.Linear of its blocks is replaced by a
bitsandbytes layer made from the very same weights — 4bit: nf4 with double quantization, computing in bf16 (the
QLoRA recipe's BitsAndBytesConfig); 8bit: LLM.int8() (threshold 6). The task is step_bench's: last hidden state →
Linear(hidden, 2) → cross-entropy, AdamW, r = 16 on q/k/v.

Variants per base (bf16, 8bit, 4bit), all in one process, timed round-robin (median over --steps):
  floor    frozen base, inputs_embeds require grad: activation gradients all the way down, only the head trains
  lora     PEFT LoRA (on the 4-bit base: QLoRA), float32 adapter weights as PEFT makes them
  curlora  CURLoRA (C and R from the dequantized weight, in bf16; U float32)
and, with --compile, the 4-bit variants again under torch.compile (forward + loss; a variant that fails to
compile is reported as such). prepare_model_for_kbit_training is not applied: it would cast the norms and
embeddings to float32 for every variant alike, adding the same bytes to each.

Peak memory of a variant = its resident bytes (weights incl. quantization statistics, buffers, adapter, head,
optimizer state) + the transient peak of one step (max_memory_allocated − memory_allocated before it).

Targets (4-bit; eager and compiled): CURLoRA peak ≤ floor + 2 %; step ≤ 1.05 × floor and ≤ 0.85 × QLoRA.

    python perf/quant_bench.py --out quant.json                        # H100/H200: ~5 min eager
    python perf/quant_bench.py --bases 4bit --compile --out quant-compiled.json
    python perf/quant_bench.py --device cpu --model smollm2-135m --layers 2 --seq 64 --batch 1 --steps 2
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from curlora.testing import architecture_config, random_init_

SCHEMA = "curlora-quant-bench/1"
TARGET_MODULES = ["q_proj", "k_proj", "v_proj"]
BASES = ("bf16", "8bit", "4bit")
METHODS = ("floor", "lora", "curlora")
GIB = 2**30


def build_backbone(name: str, device: torch.device, layers: int | None, seed: int) -> nn.Module:
    from curlora.models.load import build_on_meta

    config = architecture_config(name, **({"num_hidden_layers": layers} if layers else {}))
    backbone = build_on_meta(config).model  # no LM head: the task reads the last hidden state
    torch.manual_seed(seed)
    random_init_(backbone, device, torch.bfloat16)
    return backbone.requires_grad_(False).eval()


def _bnb_linear(dense: nn.Linear, base: str) -> nn.Module:
    import bitsandbytes as bnb

    w = dense.weight.data
    kw = dict(bias=dense.bias is not None, device="meta")
    if base == "4bit":
        layer = bnb.nn.Linear4bit(
            dense.in_features, dense.out_features, compute_dtype=torch.bfloat16, compress_statistics=True,
            quant_type="nf4", **kw,
        )  # fmt: skip
        layer.weight = bnb.nn.Params4bit(
            w, requires_grad=False, compress_statistics=True, quant_type="nf4", module=layer
        ).to(w.device)  # Params4bit quantizes when it is moved to a device
    else:
        layer = bnb.nn.Linear8bitLt(dense.in_features, dense.out_features, has_fp16_weights=False, threshold=6.0, **kw)
        cb, scb, _ = bnb.functional.int8_vectorwise_quant(w.to(torch.float16))
        weight = bnb.nn.Int8Params(cb, requires_grad=False, has_fp16_weights=False)
        weight.CB, weight.SCB = cb, scb
        layer.weight = weight
    if dense.bias is not None:
        layer.bias = nn.Parameter(dense.bias.data, requires_grad=False)
    return layer


def quantized_copy(dense: nn.Module, base: str) -> nn.Module:
    """`dense` with every nn.Linear replaced by a bitsandbytes layer of the same weights (others shared)."""
    if base == "bf16":
        return dense
    memo = {id(t): t for t in [*dense.parameters(), *dense.buffers()]}
    model = copy.deepcopy(dense, memo)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, _bnb_linear(child, base))
    # what PEFT's LoRA dispatch reads to pick its bitsandbytes layers (from_pretrained sets these)
    model.is_loaded_in_4bit, model.is_loaded_in_8bit = base == "4bit", base == "8bit"
    return model


def share_copy(model: nn.Module) -> nn.Module:
    """A copy of the module tree sharing every tensor (and the bitsandbytes weights) with `model`."""
    memo = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    copied = copy.deepcopy(model, memo)
    copied.is_loaded_in_4bit = getattr(model, "is_loaded_in_4bit", False)
    copied.is_loaded_in_8bit = getattr(model, "is_loaded_in_8bit", False)
    return copied


def resident_bytes(*objs: Any) -> int:
    """Unique storages of parameters, grads, buffers, bitsandbytes quantization statistics, optimizer state."""
    seen: set[int] = set()
    total = 0

    def add(t: Any) -> None:
        nonlocal total
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            ptr = t.untyped_storage().data_ptr()
            if ptr not in seen:
                seen.add(ptr)
                total += t.untyped_storage().nbytes()

    def add_state(state: Any) -> None:  # a bitsandbytes QuantState (absmax, code, nested state2)
        if state is None:
            return
        for value in vars(state).values():
            add(value)
            if type(value).__name__ == "QuantState":
                add_state(value)

    for obj in objs:
        if isinstance(obj, torch.optim.Optimizer):
            for st in obj.state.values():
                for v in st.values():
                    add(v)
            continue
        for p in obj.parameters():
            add(p)
            add(p.grad)
            add_state(getattr(p, "quant_state", None))
            add(getattr(p, "SCB", None))
        for b in obj.buffers():
            add(b)
    return total


def make_runner(method: str, base_model: nn.Module, emb, labels, rank: int, compiled: bool, device):
    import peft

    import curlora

    model = share_copy(base_model)
    if method == "lora":
        peft.get_peft_model(model, curlora.lora_config(rank, 1.0, target_modules=TARGET_MODULES))  # in place
    elif method == "curlora":
        peft.get_peft_model(model, curlora.CURLoRAConfig(r=rank, target_modules=TARGET_MODULES))
    torch.manual_seed(0)
    head = nn.Linear(model.config.hidden_size, 2, device=device, dtype=torch.float32)
    params = list(head.parameters()) + [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda" or None)
    x = emb.detach().clone().requires_grad_(method == "floor")
    model.train()

    def loss_fn(inputs):
        out = model(inputs_embeds=inputs, use_cache=False).last_hidden_state
        return F.cross_entropy(head(out[:, -1].float()), labels)

    fwd = torch.compile(loss_fn, dynamic=False) if compiled else loss_fn

    def step():
        loss = fwd(x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        x.grad = None
        return loss.detach()

    info = {"adapter_params": sum(p.numel() for p in params) - sum(p.numel() for p in head.parameters())}
    return {"step": step, "modules": [model, head], "opt": opt, "info": info}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(runners: dict[str, dict], device, steps: int, warmup: int) -> None:
    for name, r in list(runners.items()):
        t0 = time.perf_counter()
        try:
            for _ in range(warmup):
                r["step"]()
            _sync(device)
        except Exception as exc:  # a variant bitsandbytes or torch.compile cannot run: reported, not fatal
            r["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            print(f"  {name}: FAILED {r['error']}", file=sys.stderr)
            continue
        r["info"]["warmup_s"] = time.perf_counter() - t0
        if device.type == "cuda":  # one step's transient peak on top of what the variant holds
            _sync(device)
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            r["step"]()
            _sync(device)
            r["info"]["transient_bytes"] = torch.cuda.max_memory_allocated(device) - before
        r["info"]["resident_bytes"] = resident_bytes(*r["modules"], r["opt"])
        r["info"]["peak_bytes"] = r["info"]["resident_bytes"] + r["info"].get("transient_bytes", 0)
        r["times"] = []
    live = [n for n, r in runners.items() if "error" not in r]
    for _ in range(steps):  # round-robin: drift and load hit every variant alike
        for name in live:
            _sync(device)
            t0 = time.perf_counter()
            runners[name]["step"]()
            _sync(device)
            runners[name]["times"].append(time.perf_counter() - t0)
    for name in live:
        runners[name]["info"]["step_s"] = statistics.median(runners[name]["times"])


def targets(results: dict[str, dict], suffix: str) -> list[dict]:
    def get(method, key):
        return results.get(f"4bit/{method}{suffix}", {}).get(key)

    rows = []
    checks = (
        ("CURLoRA peak ≤ 1.02 × 4-bit floor peak", "peak_bytes", "floor", 1.02),
        ("CURLoRA step ≤ 1.05 × 4-bit floor step", "step_s", "floor", 1.05),
        ("CURLoRA step ≤ 0.85 × QLoRA step", "step_s", "lora", 0.85),
    )
    for text, key, against, limit in checks:
        mine, theirs = get("curlora", key), get(against, key)
        ratio = None if mine is None or not theirs else mine / theirs
        verdict = "n/a" if ratio is None else ("PASS" if ratio <= limit else "FAIL")
        rows.append({"target": text + (" (compiled)" if suffix else ""), "ratio": ratio, "limit": limit,
                     "verdict": verdict})  # fmt: skip
    return rows


def environment(device) -> dict[str, Any]:
    import bitsandbytes
    import peft
    import transformers

    return {
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "bitsandbytes": bitsandbytes.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mistral-7b", help="an architecture of curlora.testing.ARCHITECTURES")
    p.add_argument("--layers", type=int, default=None, help="fewer decoder layers (smoke runs)")
    p.add_argument("--bases", default=",".join(BASES), help="bf16, 8bit, 4bit (comma separated)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="also the 4-bit variants under torch.compile")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    bases = [b.strip() for b in args.bases.split(",") if b.strip()]
    if unknown := set(bases) - set(BASES):
        p.error(f"unknown base(s) {sorted(unknown)}; choose from {', '.join(BASES)}")
    device = torch.device(args.device)
    warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")
    warnings.filterwarnings("ignore", message=".*inputs will be cast.*")

    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    dense = build_backbone(args.model, device, args.layers, args.seed)
    hidden = dense.config.hidden_size
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    emb = (torch.randn(args.batch, args.seq, hidden, generator=gen) * 0.02).to(device, torch.bfloat16)
    labels = torch.randint(0, 2, (args.batch,), generator=gen).to(device)

    results: dict[str, dict] = {}
    for base in bases:
        base_model = quantized_copy(dense, base)
        variants = [(m, False) for m in METHODS]
        if args.compile and base == "4bit":
            variants += [(m, True) for m in METHODS]
        runners = {}
        for method, compiled in variants:
            name = f"{base}/{method}" + ("-compile" if compiled else "")
            t0 = time.perf_counter()
            runners[name] = make_runner(method, base_model, emb, labels, args.rank, compiled, device)
            runners[name]["info"]["setup_s"] = time.perf_counter() - t0
        print(f"{base}: timing {', '.join(runners)}", file=sys.stderr)
        measure(runners, device, args.steps, args.warmup)
        for name, r in runners.items():
            results[name] = {**r["info"], **({"error": r["error"]} if "error" in r else {})}
        del runners, base_model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    rows = targets(results, "") + (targets(results, "-compile") if args.compile else [])
    print(f"\n{args.model} (layers={args.layers or 'all'}), seq {args.seq}, batch {args.batch}, r={args.rank} q/k/v")
    print(f"{'variant':24} {'peak GiB':>9} {'step ms':>9} {'adapter params':>15}")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:24} FAILED: {r['error']}")
            continue
        print(f"{name:24} {r['peak_bytes'] / GIB:9.2f} {r['step_s'] * 1e3:9.1f} {r['adapter_params']:15,}")
    for row in rows:
        ratio = "n/a" if row["ratio"] is None else f"{row['ratio']:.3f}"
        print(f"{row['verdict']:4}  {row['target']}: {ratio}")
    if device.type != "cuda":
        print("(CPU: peak = resident bytes only; targets are defined on a GPU run)")
    if args.out:
        payload = {
            "schema": SCHEMA,
            "created": started,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "environment": environment(device) | {"cpu_count": os.cpu_count()},
            "results": results,
            "targets": rows,
        }
        from curlora.files import atomic_write_json

        atomic_write_json(args.out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
