"""Serving throughput of CURLoRA adapters: mixed-adapter batches against one adapter unmerged and merged.

Variants, timed in one process, interleaved round-robin:
  base        the base model, no adapter (reference)
  merged      one adapter merged into the weights (merge_and_unload): what a single-task server runs
  unmerged    one adapter, unmerged, active for every row (the ordinary PEFT forward)
  mixed-K     K adapters loaded, `adapter_names=` cycling over them row by row (K = --adapters, e.g. 1,8,64)

For each, at each batch size (--batches): prefill tokens/s (one forward over batch × --prompt tokens) and
decode tokens/s (greedy `generate`: (time for 1 + D new tokens − time for 1) over batch × D tokens, D =
--decode). No targets, no PASS/FAIL: numbers for the docs, written as JSON to --out.

    python perf/serve_bench.py --tiny --out serve-cpu.json                  # CPU, tiny random Llama (~2 min)
    python perf/serve_bench.py --device cuda --dtype bf16 --out serve.json  # SmolLM2-135M architecture
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from pathlib import Path

import torch


def build_model(args, device: torch.device, dtype: torch.dtype):
    if args.tiny:
        from curlora.testing import tiny_llama

        return tiny_llama(hidden_size=128, num_layers=4, intermediate_size=256).to(device, dtype)
    if args.builtin:
        import curlora

        return curlora.load_model("smollm2-135m", dtype=dtype, device=device)[0]
    from curlora.models.load import build_on_meta
    from curlora.testing import architecture_config, random_init_

    model = build_on_meta(architecture_config(args.model))
    torch.manual_seed(args.seed)
    return random_init_(model, device, dtype).eval()


def add_adapters(model, n: int, rank: int, seed: int):
    """A PeftModel with adapters t0..t{n-1}, each with its own selection seed and a random U."""
    import peft

    import curlora

    names = [f"t{i}" for i in range(n)]
    peft_model = peft.get_peft_model(model, curlora.CURLoRAConfig(r=rank, seed=seed), adapter_name=names[0])
    for i, name in enumerate(names[1:], 1):
        peft_model.add_adapter(name, curlora.CURLoRAConfig(r=rank, seed=seed + i))
    gen = torch.Generator().manual_seed(seed)
    for module in peft_model.modules():
        if isinstance(module, curlora.CURLoRALayer):
            for u in module.curlora_U.values():
                u.data.copy_((torch.randn(u.shape, generator=gen) * 1e-2).to(u.dtype))
    peft_model.set_adapter(names[0])
    return peft_model.eval(), names


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny random Llama (CPU smoke/overhead numbers)")
    p.add_argument("--builtin", action="store_true", help="the built-in SmolLM2-135M weights (else random init)")
    p.add_argument("--model", default="smollm2-135m", help="architecture for random init (curlora.testing)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="float32 / bf16 (default: bf16 on cuda, float32 on cpu)")
    p.add_argument("--adapters", default="1,8,64", help="loaded adapter counts for the mixed variants")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--prompt", type=int, default=None, help="prompt tokens (default: cuda 256, cpu/tiny 32)")
    p.add_argument("--decode", type=int, default=None, help="new tokens timed (default: cuda 64, cpu 16)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default: cuda 10, cpu 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="write the JSON here")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32,
             "fp16": torch.float16}[args.dtype or ("bf16" if cuda else "float32")]  # fmt: skip
    prompt = args.prompt or (256 if cuda and not args.tiny else 32)
    decode = args.decode or (64 if cuda else 16)
    rounds = args.rounds or (10 if cuda else 3)
    counts = [int(k) for k in args.adapters.split(",")]
    batches = [int(b) for b in args.batches.split(",")]

    model = build_model(args, device, dtype)
    base = copy.deepcopy(model)
    peft_model, names = add_adapters(model, max(counts), args.rank, args.seed)
    merged = copy.deepcopy(peft_model).merge_and_unload()  # adapter t0 merged
    vocab = base.config.vocab_size
    gen = torch.Generator().manual_seed(args.seed)

    def runner(variant: str, batch: int):
        if variant == "base":
            model_, extra = base, {}
        elif variant == "merged":
            model_, extra = merged, {}
        elif variant == "unmerged":
            model_, extra = peft_model, {}
        else:
            k = int(variant.split("-")[1])
            model_, extra = peft_model, {"adapter_names": [names[i % k] for i in range(batch)]}
        ids = torch.randint(4, vocab, (batch, prompt), generator=gen).to(device)
        mask = torch.ones_like(ids)

        @torch.no_grad()
        def prefill():
            model_(input_ids=ids, attention_mask=mask, use_cache=False, **extra)

        @torch.no_grad()
        def generate(n):
            model_.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                            do_sample=False, pad_token_id=0, **extra)  # fmt: skip

        return prefill, generate

    def timed(fn, *a):
        _sync(device)
        start = time.perf_counter()
        fn(*a)
        _sync(device)
        return time.perf_counter() - start

    variants = ["base", "merged", "unmerged", *[f"mixed-{k}" for k in counts]]
    results = []
    for batch in batches:
        runs = {v: runner(v, batch) for v in variants}
        for prefill, generate in runs.values():  # warm-up (and CUDA/cuBLAS initialisation)
            prefill()
            generate(2)
        times = {v: {"prefill": [], "gen1": [], "genD": []} for v in variants}
        for i in range(rounds):
            order = variants[i % len(variants) :] + variants[: i % len(variants)]
            for v in order:
                prefill, generate = runs[v]
                times[v]["prefill"].append(timed(prefill))
                times[v]["gen1"].append(timed(generate, 1))
                times[v]["genD"].append(timed(generate, 1 + decode))
        for v in variants:
            t = {k: statistics.median(x) for k, x in times[v].items()}
            decode_s = t["genD"] - t["gen1"]  # not positive only when noise swamps the run: null, flagged
            ok = decode_s > 0
            results.append({
                "variant": v, "batch": batch, "prefill_tokens_per_s": batch * prompt / t["prefill"],
                "decode_tokens_per_s": batch * decode / decode_s if ok else None, "decode_noisy": not ok,
                "prefill_ms": 1e3 * t["prefill"], "decode_ms_per_token": 1e3 * decode_s / decode if ok else None,
            })  # fmt: skip
    ref = {(r["batch"]): r for r in results if r["variant"] == "merged"}
    for r in results:
        m = ref[r["batch"]]
        r["prefill_vs_merged"] = r["prefill_tokens_per_s"] / m["prefill_tokens_per_s"]
        ok = r["decode_tokens_per_s"] and m["decode_tokens_per_s"]
        r["decode_vs_merged"] = r["decode_tokens_per_s"] / m["decode_tokens_per_s"] if ok else None
    report = {
        "schema": "curlora-serve-bench/1",
        "model": "tiny-llama" if args.tiny else ("builtin " if args.builtin else "random ") + args.model,
        "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine(),
        "dtype": str(dtype).removeprefix("torch."), "rank": args.rank, "prompt_tokens": prompt,
        "decode_tokens": decode, "rounds": rounds, "torch": torch.__version__, "results": results,
    }  # fmt: skip
    from curlora.files import atomic_write_json, finite_or_null

    atomic_write_json(args.out, finite_or_null(report))
    print(f"{'variant':<12}{'batch':>6}{'prefill tok/s':>15}{'×merged':>9}{'decode tok/s':>14}{'×merged':>9}")
    def fmt(x, spec):
        return "-" if x is None else format(x, spec)

    for r in results:
        print(f"{r['variant']:<12}{r['batch']:>6}{r['prefill_tokens_per_s']:>15.0f}{r['prefill_vs_merged']:>9.3f}"
              f"{fmt(r['decode_tokens_per_s'], '.0f'):>14}{fmt(r['decode_vs_merged'], '.3f'):>9}")  # fmt: skip
    return report


if __name__ == "__main__":
    main()
