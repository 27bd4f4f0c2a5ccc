"""Micro-benchmark of one CURLoRA linear layer: forward+backward (x needs a gradient, W frozen) and forward only.

Compares the frozen base layer alone (the floor) with PEFT LoRA and the CURLoRA forward implementations of
`layer_variants.py`, at the q/k/v shapes of the models in `step_bench.py`. Prints one line per shape and
variant with the time and the overhead over the floor.

    python perf/layer_bench.py --device cpu --tokens 512 --shapes 576x576,576x192,2048x2048,2048x512
    python perf/layer_bench.py --device cuda --tokens 8192 --shapes 4096x4096,4096x1024
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import layer_variants
import torch
from torch import nn

import curlora
from curlora.tuner.layer import CURLoRALinear


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time_interleaved(fns: dict, device: str, warmup: int, reps: int) -> dict[str, float]:
    """Median ms of each callable, run round-robin so that load from other processes hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) * 1e3 for name, ts in times.items()}


def share_base(base: nn.Linear) -> nn.Linear:
    """A second nn.Linear holding the same (frozen) weight tensor."""
    twin = nn.Linear(base.in_features, base.out_features, bias=False, device="meta")
    twin.weight = base.weight
    return twin


def _lora_layer(base: nn.Linear, rank: int) -> nn.Module:
    """PEFT LoRA (PEFT defaults, as in step_bench's `lora` variant) around `base`, B made non-zero."""
    import peft

    class Holder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = base

    model = peft.get_peft_model(Holder(), curlora.lora_config(rank, 1.0, target_modules=["proj"]))
    layer = model.base_model.model.proj
    for p in layer.lora_B.parameters():
        p.data.normal_(std=0.01)
    return layer


def bench_shape(in_f: int, out_f: int, tokens: int, rank: int, device: str, dtype: torch.dtype, variants, reps):
    torch.manual_seed(0)
    base = nn.Linear(in_f, out_f, bias=False, device=device, dtype=dtype).requires_grad_(False)
    nn.init.normal_(base.weight, std=0.02)
    layer = CURLoRALinear(base, "default", curlora.CURLoRAConfig(r=rank), layer_name="bench")
    layer.curlora_U["default"].data.normal_(std=0.01)
    x = torch.randn(tokens // 512 or 1, min(tokens, 512), in_f, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(*x.shape[:-1], out_f, device=device, dtype=dtype)

    lora = _lora_layer(share_base(base), rank) if "lora" in variants else None

    def train(module):
        def step():
            x.grad = None
            for p in module.parameters():
                p.grad = None
            module(x).backward(grad)

        return step

    def infer(module):
        def step():
            with torch.inference_mode():
                module(x)

        return step

    def variant(name, step):
        def run():
            layer_variants.use(layer, name)
            step()

        return run

    curlora_variants = [name for name in variants if name != "lora"]
    train_fns = {"floor": train(base)} | {name: variant(name, train(layer)) for name in curlora_variants}
    infer_fns = {"floor": infer(base)} | {name: variant(name, infer(layer)) for name in curlora_variants}
    if lora is not None:
        train_fns["lora"], infer_fns["lora"] = train(lora), infer(lora)
    train_ms = _time_interleaved(train_fns, device, 3, reps)
    infer_ms = _time_interleaved(infer_fns, device, 3, reps)
    rows = {name: (train_ms[name], infer_ms[name]) for name in train_fns}
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens", type=int, default=512, help="batch × sequence (sequence capped at 512)")
    parser.add_argument("--shapes", default="576x576,576x192,2048x2048,2048x512", help="in×out, comma separated")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--variants", default="lora,orig,xr,library", help="lora and layer_variants names")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    variants = [v for v in args.variants.split(",") if v]
    print(f"device={args.device} dtype={dtype} tokens={args.tokens} rank={args.rank} threads={torch.get_num_threads()}")
    print(f"{'shape':>12} {'variant':>8} {'train ms':>9} {'vs floor':>9} {'infer ms':>9} {'vs floor':>9}")
    for shape in args.shapes.split(","):
        in_f, out_f = (int(v) for v in shape.split("x"))
        rows = bench_shape(in_f, out_f, args.tokens, args.rank, args.device, dtype, variants, args.reps)
        f_train, f_infer = rows["floor"]
        for name, (t, i) in rows.items():
            print(f"{shape:>12} {name:>8} {t:9.3f} {t / f_train:9.3f} {i:9.3f} {i / f_infer:9.3f}")


if __name__ == "__main__":
    main()
