"""Training throughput and GPU memory of the bench's CURLoRA step on 1 or N processes (DDP-like or FSDP).

The step is the bench's (`curlora.recipes.bench.Bench._train`): backbone → hidden state of the last token →
Linear(hidden, 2) → cross-entropy, AdamW on U + head, bf16 autocast on CUDA. The model is random-init (normal,
std 0.02) from a published architecture, built on every rank from the same seed (checked equal across ranks).
The global batch is --batch-size whatever the number of processes: each rank takes its slice, as in the bench,
so steps/s compares like for like (ideal scaling: N times the 1-process steps/s).

    python perf/ddp_throughput.py --model llama-1b                               # 1 GPU
    accelerate launch --config_file configs/accelerate/ddp.yaml perf/ddp_throughput.py --model llama-1b
    accelerate launch --config_file configs/accelerate/fsdp.yaml perf/ddp_throughput.py --model llama-7b
    torchrun --nproc_per_node 2 perf/ddp_throughput.py --model tiny --device cpu  # CPU smoke test (gloo)

Rank 0 prints one JSON object (and writes it to --out): steps/s, examples/s, tokens/s, and on CUDA the peak
memory of the largest rank: `peak_gib` during the timed steps, `resident_gib` after wrapping/sharding, and
`before_shard_gib` (the whole model on each GPU before FSDP shards it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from curlora import distributed
from curlora.files import finite_or_null
from curlora.methods import parse_method, wrap_model
from curlora.recipes.bench import resolve_device
from curlora.recipes.bench.classify import backbone_of, pooled_hidden
from curlora.testing import ARCHITECTURES, random_init_

MODELS = {
    "tiny": dict(
        model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, vocab_size=320, tie_word_embeddings=True, max_position_embeddings=256,
    ),
    "llama-1b": ARCHITECTURES["llama-1b"],
    "llama-7b": ARCHITECTURES["llama-7b"],
}  # fmt: skip
GIB = 2**30


def build(name: str, device: torch.device, dtype: torch.dtype, seed: int) -> nn.Module:
    """The causal LM, random-init directly on `device` in `dtype` (no full fp32 copy anywhere)."""
    from transformers import AutoConfig

    from curlora.models.load import build_on_meta

    spec = dict(MODELS[name])
    model = build_on_meta(AutoConfig.for_model(spec.pop("model_type"), **spec))
    random_init_(model, device, dtype, generator=torch.Generator(device=device).manual_seed(seed))
    return model.eval().requires_grad_(False)


def _gib(x: float) -> float:
    return round(x / GIB, 3)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="llama-1b", choices=sorted(MODELS))
    p.add_argument("--method", default="curlora-16", help="curlora-R, lora-R or full (as in the bench)")
    p.add_argument("--batch-size", type=int, default=16, help="global batch (split over the processes)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", help="auto: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--fsdp", action="store_true", help="shard with FSDP2 (also on when ACCELERATE_USE_FSDP=true)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    device, dtype = resolve_device(args.device, args.dtype)
    info, device = distributed.setup(device)
    if args.fsdp and info.enabled:
        info = dataclasses.replace(info, fsdp=True)
    cuda = device.type == "cuda"
    torch.manual_seed(args.seed)

    model = build(args.model, device, dtype, args.seed)
    spec = parse_method(args.method)
    model = wrap_model(
        model, spec, target_modules=["q_proj", "k_proj", "v_proj"], alpha=1.0, sampling="inverted", seed=args.seed
    )
    distributed.broadcast_([q for q in model.parameters() if q.requires_grad], info)
    distributed.check_replicated(model, info)
    trainable = sum(q.numel() for q in model.parameters() if q.requires_grad)
    before_shard = torch.cuda.memory_allocated(device) if cuda else 0
    body = backbone_of(model)
    if info.fsdp:
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        distributed.fully_shard_body(body, inner, device, info)
        if cuda:
            torch.cuda.empty_cache()
    head = nn.Linear(MODELS[args.model]["hidden_size"], 2).to(device)
    params = [q for q in model.parameters() if q.requires_grad] + list(head.parameters())
    synced = [q for q in params if not distributed.is_sharded(q)]
    # FSDP2 makes the adapter DTensors while the head stays a plain tensor: the fused foreach path cannot mix them
    opt = torch.optim.AdamW(params, lr=1e-4, foreach=False if any(hasattr(p, "placements") for p in params) else None)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()

    rows = distributed.shard_range(args.batch_size, info.rank, info.world_size)
    if len(rows) == 0:
        raise SystemExit(f"--batch-size {args.batch_size} leaves rank {info.rank} no example; raise it")
    gen = torch.Generator().manual_seed(args.seed + 1)
    vocab = MODELS[args.model]["vocab_size"]
    batches = [  # the same global batches on every rank; each rank keeps its rows
        (
            torch.randint(4, vocab, (args.batch_size, args.seq_len), generator=gen),
            torch.randint(0, 2, (args.batch_size,), generator=gen),
        )
        for _ in range(4)
    ]
    mask = torch.ones(len(rows), args.seq_len, dtype=torch.long, device=device)
    local = [(ids[rows.start : rows.stop].to(device), y[rows.start : rows.stop].to(device)) for ids, y in batches]
    scale = info.world_size / args.batch_size

    def step(k: int) -> torch.Tensor:
        ids, labels = local[k % len(local)]
        with autocast:
            logits = head(pooled_hidden(body, ids, mask).float())
        loss = F.cross_entropy(logits.float(), labels, reduction="sum") * scale
        loss.backward()
        if info.enabled:
            distributed.average_grads_(synced, info)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    model.train()
    for k in range(args.warmup):
        step(k)
    if cuda:
        torch.cuda.synchronize(device)
        resident = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    distributed.barrier(info)
    t0 = time.perf_counter()
    losses = [step(k) for k in range(args.steps)]
    loss_t = distributed.sum_over_ranks_(torch.stack(losses).mean(), info) / info.world_size  # the global loss
    loss = float(loss_t)  # waits for the last step
    if cuda:
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    # the slowest rank sets the pace; memory: the largest rank
    stats = torch.tensor(
        [elapsed, torch.cuda.max_memory_allocated(device) if cuda else 0, resident if cuda else 0, before_shard],
        dtype=torch.float64,
        device=device,
    )
    if info.enabled:
        torch.distributed.all_reduce(stats, op=torch.distributed.ReduceOp.MAX)
    elapsed = float(stats[0])
    result = {
        "model": args.model,
        "method": spec.label,
        "processes": info.world_size,
        "fsdp": info.fsdp,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "global_batch": args.batch_size,
        "seq_len": args.seq_len,
        "trainable_params": trainable,
        "steps": args.steps,
        "steps_per_s": round(args.steps / elapsed, 3),
        "examples_per_s": round(args.steps * args.batch_size / elapsed, 1),
        "tokens_per_s": round(args.steps * args.batch_size * args.seq_len / elapsed, 1),
        "mean_loss": round(loss, 5),  # the same for any number of processes (up to float rounding)
        "torch": torch.__version__,
    }
    if cuda:
        result |= {
            "peak_gib": _gib(float(stats[1])),
            "resident_gib": _gib(float(stats[2])),
            "before_shard_gib": _gib(float(stats[3])),
        }
    if info.is_main:
        text = json.dumps(finite_or_null(result), allow_nan=False)  # one line per run, appended
        print(text)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with args.out.open("a") as f:
                f.write(text + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
