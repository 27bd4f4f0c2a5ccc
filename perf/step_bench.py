"""One training step and one inference pass of CURLoRA, PEFT LoRA and the physical floor, side by side.

The task is classification on the last token: backbone → last hidden state → Linear(hidden, 2) →
cross-entropy, trained with AdamW. Models are real architectures (SmolLM2-135M, a Llama-3.2-1B-like model,
Mistral-7B) built in code with random weights (normal, std 0.02): no downloads.

Variants (``--variants``, comma separated; run in ONE process, interleaved round-robin by default):

train (forward + backward + AdamW step):
  floor           frozen base, inputs_embeds require grad (activation gradients all the way down, no weight
                  gradients); only the head trains. No adapter can be cheaper than this.
  lora            PEFT LoRA r on q/k/v (PEFT defaults: adapter weights in float32).
  lora-bf16       PEFT LoRA with autocast_adapter_dtype=False (adapter weights in the model's dtype).
  curlora         CURLoRA r on q/k/v, eager, the library's forward (x·Rᵀ taken from the base output; under
                  torch.compile on CUDA with Triton, as the fused kernels of curlora/tuner/kernels.py).
  curlora-ungrouped  the library's forward without its q/k/v groups (one kernel launch per projection).
  curlora-torch   the library's base-output path as torch ops (no Triton kernels): the path before the kernels.
  curlora-triton  the Triton kernels also in eager mode (the library uses them only under torch.compile).
  curlora-xr      CURLoRA with x·Rᵀ as a GEMM over x (the library's fallback path; perf/layer_variants.py).
  curlora-orig    CURLoRA with the forward from before any performance pass (perf/layer_variants.py).
  curlora-reduce  CURLoRA with the rank-r products as sums over r, for inductor to fuse: use it as
                  curlora-reduce-compile only (eager it builds tokens × out × r temporaries).
  <any>-compile   the same with torch.compile on the forward + loss (backward compiled by AOTAutograd; the
                  optimizer step stays eager). Compile time is reported separately (first warm-up call).
inference (forward only, no grad):
  infer-base, infer-lora, infer-curlora, infer-curlora-torch, infer-curlora-xr, infer-curlora-ungrouped,
  infer-merged (CURLoRA after merge_and_unload); each also with -compile (the forward under torch.compile,
  held against infer-base-compile; on CUDA the unmerged CURLoRA forward then runs the fused kernel)
other:
  disk            save_pretrained of LoRA and CURLoRA adapters; adapter_model.safetensors sizes and ratio.

Timing: by default every step starts from an idle GPU (synchronise, step, synchronise), so host work before the
first kernel (Python, TorchDynamo's guard checks) counts in full. `--back-to-back K` times K steps queued without
a synchronisation between them, as a training loop runs that does not read the loss every step, and also times
one step at a time in the same rounds (both in the table and the JSON).

Every variant works on its own shallow copy of the backbone: the module tree is copied, the weight tensors are
shared (merge copies the adapted weights first), so all variants fit in memory together and are timed
round-robin: load from other processes and clock drift hit all of them alike.

Memory: on CUDA, a variant's peak = its resident bytes (weights, buffers, adapter, head, optimizer state) +
the transient peak of one step (torch.cuda.max_memory_allocated minus memory_allocated before the step).
On CPU there is no allocator peak to read (tracemalloc does not see torch, RSS is shared by all variants in
the process), so the peak is ESTIMATED as resident bytes + the bytes saved for backward (counted with
torch.autograd.graph.saved_tensors_hooks, unique storages, weights excluded). The saved-for-backward bytes are
reported on both devices (eager variants).

    python perf/step_bench.py --device cpu --models smollm2-135m --layers 4 --seq 128 --batch 4
    python perf/step_bench.py --device cuda --models smollm2-135m,llama-1b,mistral-7b --out gpu.json
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from curlora.files import atomic_write_json, finite_or_null
from curlora.testing import ARCHITECTURES, architecture_config, random_init_

SCHEMA = "curlora-step-bench/1"
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # torch.compile modes that capture CUDA graphs
TARGET_MODULES = ["q_proj", "k_proj", "v_proj"]

MODELS = ARCHITECTURES  # the benchmarked architectures (curlora.testing)
DEFAULT_BATCH = {
    "cuda": {"smollm2-135m": 16, "llama-1b": 8, "mistral-7b": 4},
    "cpu": {"smollm2-135m": 4, "llama-1b": 1, "mistral-7b": 1},
}
DEFAULT_VARIANTS = (
    "floor,floor-compile,lora,curlora,curlora-compile,infer-base,infer-lora,infer-curlora,infer-merged,disk"
)
TRAIN_BASES = (
    "floor", "lora", "lora-bf16", "curlora", "curlora-torch", "curlora-triton", "curlora-orig", "curlora-xr",
    "curlora-reduce", "curlora-ungrouped",
)  # fmt: skip
INFER_VARIANTS = (
    "infer-base", "infer-lora", "infer-curlora", "infer-curlora-torch", "infer-curlora-xr", "infer-merged",
    "infer-curlora-ungrouped",
)  # fmt: skip
ALL_VARIANTS = [
    *(v for v in TRAIN_BASES if v != "curlora-reduce"), "floor-compile", "lora-compile", "curlora-compile",
    "curlora-torch-compile", "curlora-xr-compile", "curlora-reduce-compile", *INFER_VARIANTS, "disk"
]  # fmt: skip

log = logging.getLogger("step_bench")


# ------------------------------------------------------------------------------------------------------------
# models
# ------------------------------------------------------------------------------------------------------------


def build_backbone(name: str, device: torch.device, dtype: torch.dtype, layers: int | None, seed: int) -> nn.Module:
    """The decoder backbone (no LM head) of model `name`, random-init in `dtype` on `device`."""
    from curlora.models.load import build_on_meta

    config = architecture_config(name, **({"num_hidden_layers": layers} if layers else {}))
    backbone = build_on_meta(config).model  # the LM head is never built: the task reads the last hidden state
    torch.manual_seed(seed)
    random_init_(backbone, device, dtype)
    backbone.requires_grad_(False)
    backbone.eval()  # no dropout anywhere; train/eval does not change the math of these models
    return backbone


def model_info(backbone: nn.Module) -> dict[str, Any]:
    cfg = backbone.config
    return {
        "model_type": cfg.model_type,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "intermediate_size": cfg.intermediate_size,
        "vocab_size": cfg.vocab_size,
        "backbone_params": sum(p.numel() for p in backbone.parameters()),
    }


def share_copy(backbone: nn.Module, own: Callable[[str], bool] = lambda _name: False) -> nn.Module:
    """A copy of the module tree sharing weight and buffer tensors with `backbone`, except parameters whose
    name satisfies `own` (those are copied: merging writes into them)."""
    memo: dict[int, Any] = {}
    for pname, param in backbone.named_parameters():
        if not own(pname):
            memo[id(param)] = param
    for buf in backbone.buffers():
        memo[id(buf)] = buf
    return copy.deepcopy(backbone, memo)


def resident_bytes(*objs: Any) -> int:
    """Bytes of the unique tensor storages held by modules (parameters, buffers, grads) and optimizers."""
    seen: set[int] = set()
    total = 0

    def add(t: torch.Tensor | None) -> None:
        nonlocal total
        if t is None or not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()

    for obj in objs:
        if isinstance(obj, nn.Module):
            for p in obj.parameters():
                add(p)
                add(p.grad)
            for b in obj.buffers():
                add(b)
        elif isinstance(obj, torch.optim.Optimizer):
            for state in obj.state.values():
                for v in state.values():
                    add(v)
    return total


# ------------------------------------------------------------------------------------------------------------
# variants
# ------------------------------------------------------------------------------------------------------------


@dataclass
class Runner:
    name: str
    kind: str  # train | infer
    step: Callable[[], torch.Tensor | None]
    modules: list[nn.Module]
    optimizer: torch.optim.Optimizer | None = None
    impl: str = "library"  # CURLoRALinear forward implementation (layer_variants)
    compiled: bool = False
    cuda_graphs: bool = False  # compiled with one of CUDA_GRAPH_MODES
    info: dict[str, Any] = field(default_factory=dict)
    times: list[float] = field(default_factory=list)
    one_step_times: list[float] = field(default_factory=list)  # with --back-to-back K > 1: also one at a time
    warmup_times: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    def run(self) -> torch.Tensor | None:
        return self.step()


def _layer_variants():
    """perf/layer_variants.py, importable whatever the working directory."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    import layer_variants

    return layer_variants


def split_compile(name: str) -> tuple[str, bool]:
    """("curlora", True) for "curlora-compile"; (name, False) without the suffix."""
    return name.removesuffix("-compile"), name.endswith("-compile")


def parse_variant(name: str) -> tuple[str, bool]:
    base, compiled = split_compile(name)
    if base not in TRAIN_BASES:
        raise SystemExit(
            f"unknown variant {name!r}; train variants: {', '.join(TRAIN_BASES)} (each also with -compile); "
            f"inference: {', '.join(INFER_VARIANTS)} (each also with -compile); and disk"
        )
    return base, compiled


def apply_adapter(backbone: nn.Module, method: str, rank: int) -> nn.Module:
    """Inject LoRA or CURLoRA into `backbone` in place; returns the PeftModel."""
    import peft

    import curlora

    if method.startswith("lora"):
        config = curlora.lora_config(rank, 1.0, target_modules=TARGET_MODULES)
        return peft.get_peft_model(backbone, config, autocast_adapter_dtype=(method != "lora-bf16"))
    return peft.get_peft_model(backbone, curlora.CURLoRAConfig(r=rank, target_modules=TARGET_MODULES))


def randomize_u(backbone: nn.Module, seed: int = 0) -> None:
    """Small non-zero U everywhere, so merged and unmerged inference do real work on a non-trivial delta."""
    from curlora import CURLoRALayer

    g = torch.Generator().manual_seed(seed)
    for module in backbone.modules():
        if isinstance(module, CURLoRALayer):
            for u in module.curlora_U.values():
                u.data.copy_(torch.randn(u.shape, generator=g).to(u.dtype) * 1e-3)


def make_runner(name: str, backbone: nn.Module, batch: dict[str, torch.Tensor], args, device) -> Runner:
    emb, labels = batch["emb"], batch["labels"]
    hidden = backbone.config.hidden_size
    info: dict[str, Any] = {}

    if split_compile(name)[0] in INFER_VARIANTS:
        label, (name, compiled) = name, split_compile(name)
        impl = {"infer-curlora-xr": "xr", "infer-curlora-torch": "torch", "infer-curlora-ungrouped": "ungrouped"}.get(
            name, "library"
        )
        # merging writes into the adapted weights: that variant gets its own copy of them
        model = share_copy(backbone, own=(lambda n: name == "infer-merged" and any(t in n for t in TARGET_MODULES)))
        if name != "infer-base":
            t0 = time.perf_counter()
            peft_model = apply_adapter(model, "lora" if name == "infer-lora" else "curlora", args.rank)
            info["setup_s"] = time.perf_counter() - t0
            randomize_u(model)
            _layer_variants().use(model, impl)
            if name == "infer-merged":
                model = peft_model.merge_and_unload()  # plain nn.Linear layers holding W + α·C·U·R
        torch.manual_seed(args.seed)
        head = nn.Linear(hidden, 2, device=device, dtype=torch.float32).requires_grad_(False)
        model.eval()

        def logits(inputs: torch.Tensor) -> torch.Tensor:
            out = model(inputs_embeds=inputs, use_cache=False).last_hidden_state
            return head(out[:, -1].float())

        fwd = torch.compile(logits, mode=args.compile_mode, dynamic=False) if compiled else logits

        def infer_step() -> torch.Tensor:
            # no_grad rather than inference_mode under torch.compile (CUDA-graph trees and inference tensors)
            with torch.no_grad() if compiled else torch.inference_mode():
                return fwd(emb)

        graphs = compiled and device.type == "cuda" and args.compile_mode in CUDA_GRAPH_MODES
        return Runner(
            label, "infer", infer_step, [model, head], impl=impl, compiled=compiled, cuda_graphs=graphs, info=info
        )

    base, compiled = parse_variant(name)
    model = share_copy(backbone)
    if base != "floor":
        t0 = time.perf_counter()
        apply_adapter(model, base, args.rank)
        info["setup_s"] = time.perf_counter() - t0
    impl = base.removeprefix("curlora-") if base.startswith("curlora-") else "library"
    _layer_variants().use(model, impl)
    torch.manual_seed(args.seed)
    head = nn.Linear(hidden, 2, device=device, dtype=torch.float32)
    params = list(head.parameters()) + [p for p in model.parameters() if p.requires_grad]
    info["trainable_params"] = sum(p.numel() for p in params)
    info["adapter_params"] = info["trainable_params"] - sum(p.numel() for p in head.parameters())
    # fused AdamW on CUDA (one kernel for all tensors, least host work), for every variant alike
    opt = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda" or None)
    # the floor: gradients w.r.t. the activations all the way down to the inputs, none w.r.t. weights
    x = emb.detach().clone().requires_grad_(base == "floor")
    model.train()

    def loss_fn(inputs: torch.Tensor) -> torch.Tensor:
        out = model(inputs_embeds=inputs, use_cache=False).last_hidden_state
        return F.cross_entropy(head(out[:, -1].float()), labels)

    fwd = torch.compile(loss_fn, mode=args.compile_mode, dynamic=False) if compiled else loss_fn

    def train_step() -> torch.Tensor:
        loss = fwd(x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        x.grad = None
        return loss.detach()

    graphs = compiled and device.type == "cuda" and args.compile_mode in CUDA_GRAPH_MODES
    return Runner(
        name,
        "train",
        train_step,
        [model, head],
        optimizer=opt,
        impl=impl,
        compiled=compiled,
        cuda_graphs=graphs,
        info=info,
    )


def disk_sizes(backbone: nn.Module, rank: int) -> dict[str, Any]:
    from curlora import adapter_bytes

    sizes: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in ("lora", "curlora"):
            peft_model = apply_adapter(share_copy(backbone), method, rank)
            path = Path(tmp) / method
            peft_model.save_pretrained(path)
            sizes[f"{method}_bytes"] = adapter_bytes(path)
            sizes[f"{method}_dir_bytes"] = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    sizes["ratio"] = sizes["curlora_bytes"] / sizes["lora_bytes"]
    return sizes


# ------------------------------------------------------------------------------------------------------------
# measuring
# ------------------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(runner: Runner, device: torch.device, back_to_back: int = 1) -> float:
    """Seconds per step of `back_to_back` steps run without a synchronisation between them: 1 times one step
    from an idle GPU to its end (host work before the first kernel counts in full); more lets the host queue
    step n + 1 while the GPU runs step n, as a training loop does that does not read the loss every step."""
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(back_to_back):
        loss = runner.run()
    _sync(device)
    elapsed = (time.perf_counter() - t0) / back_to_back
    if loss is not None and runner.kind == "train":
        runner.losses.append(float(loss))
    return elapsed


def saved_for_backward_bytes(runner: Runner) -> int:
    """Bytes of the unique storages autograd saves for backward during one step, weights/buffers excluded."""
    exclude = {t.untyped_storage().data_ptr() for m in runner.modules for t in [*m.parameters(), *m.buffers()]}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.device.type != "meta":
            storage = t.untyped_storage()
            if storage.data_ptr() not in exclude:
                seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        runner.run()
    return sum(seen.values())


def profile(runner: Runner, device: torch.device, path: Path, steps: int = 3) -> None:
    """torch.profiler over `steps` steps: the busiest kernels/ops to `path`; device-busy time per step into
    runner.info (busy ≪ wall time means the step is bound by the host: Python, dispatch, kernel launches)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    _sync(device)
    with torch_profile(activities=activities) as prof:
        for _ in range(steps):
            runner.run()
        _sync(device)
    averages = prof.key_averages()
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    if device.type == "cuda":
        # kernels only: a user annotation (e.g. "Optimizer.step#AdamW.step") also appears as a GPU-side event
        # spanning its kernels *and the gaps between them*, which would count the same time twice
        busy_us = sum(
            getattr(e, "self_device_time_total", 0)
            for e in averages
            if e.device_type.name == "CUDA" and not getattr(e, "is_user_annotation", False)
        )
        runner.info["profile_device_busy_ms"] = busy_us / 1e3 / steps
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"{runner.name}: {steps} steps\n" + averages.table(sort_by=sort, row_limit=40, max_name_column_width=90),
        encoding="utf-8",
    )


def measure_memory(runner: Runner, device: torch.device) -> None:
    info = runner.info
    gc.collect()
    if runner.kind == "train" and not runner.compiled:
        info["saved_for_backward_bytes"] = saved_for_backward_bytes(runner)
    info["resident_bytes"] = resident_bytes(*runner.modules, *([runner.optimizer] if runner.optimizer else []))
    if device.type == "cuda" and runner.compiled and runner.cuda_graphs:
        # a CUDA graph allocates its whole working set once, at capture, in a private pool: a replayed step
        # allocates nothing, so "resident + transient peak of one step" would understate it; not measured
        info["mem_method"] = "not measured: CUDA graphs (memory held in the graph pool since capture)"
    elif device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        runner.run()
        torch.cuda.synchronize(device)
        info["step_transient_bytes"] = torch.cuda.max_memory_allocated(device) - before
        info["peak_bytes"] = info["resident_bytes"] + info["step_transient_bytes"]
        info["mem_method"] = "cuda: resident + (max_memory_allocated - memory_allocated before one step)"
    elif "saved_for_backward_bytes" in info or runner.kind == "infer":
        info["peak_bytes"] = info["resident_bytes"] + info.get("saved_for_backward_bytes", 0)
        info["mem_method"] = "cpu estimate: resident + saved-for-backward bytes (no allocator peak on CPU)"


def run_model(name: str, args, device: torch.device, dtype: torch.dtype, variants: list[str]) -> dict[str, Any]:
    batch_size = args.batch or DEFAULT_BATCH[device.type][name]
    t0 = time.perf_counter()
    backbone = build_backbone(name, device, dtype, args.layers, args.seed)
    build_s = time.perf_counter() - t0
    info = model_info(backbone)
    log.info("%s: built %d layers (%.2fB params) in %.1f s; batch %d × seq %d", name,
             info["num_hidden_layers"], info["backbone_params"] / 1e9, build_s, batch_size, args.seq)  # fmt: skip
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, info["vocab_size"], (batch_size, args.seq), generator=g).to(device)
    labels = torch.randint(0, 2, (batch_size,), generator=g).to(device)
    with torch.no_grad():
        emb = backbone.get_input_embeddings()(ids)
    batch = {"emb": emb, "labels": labels}

    results: dict[str, Any] = {}
    if "disk" in variants:
        results["disk"] = {"kind": "disk", **disk_sizes(backbone, args.rank)}
        log.info("%s: adapter files: %s", name, results["disk"])
    runners = []
    torch._dynamo.reset()  # once per model: a reset between variants would throw away their compiled code
    for vname in [v for v in variants if v != "disk"]:
        runner = make_runner(vname, backbone, batch, args, device)
        counters = torch._dynamo.utils.counters
        counters.clear()
        for i in range(args.warmup):
            runner.warmup_times.append(timed(runner, device))
            if i == 0 and runner.compiled:
                runner.info["compile_s"] = runner.warmup_times[0]
        if runner.compiled:
            runner.info["graph_breaks"] = sum(counters["graph_break"].values())
            runner.info["graph_break_reasons"] = sorted(counters["graph_break"])[:10]
            runner.info["unique_graphs"] = counters["stats"].get("unique_graphs", 0)
        measure_memory(runner, device)
        runners.append(runner)
        log.info("%s/%s: warm-up %s ms", name, vname, [round(t * 1e3, 1) for t in runner.warmup_times])
    # Python's cyclic GC off while timing (as timeit does): with every variant's module tree alive, a collection
    # walks a large heap and lands, at random, in whichever step allocates the most Python objects; the objects
    # alive now are frozen out of its reach, and garbage is collected between rounds, outside the timings
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        if args.interleave:
            for i in range(args.steps):  # round i times every variant once, starting at a rotating offset
                k = i % len(runners) if runners else 0
                for runner in runners[k:] + runners[:k]:
                    runner.times.append(timed(runner, device, args.back_to_back))
                    if args.back_to_back > 1:  # the same round, one step from an idle GPU: both views, one run
                        runner.one_step_times.append(timed(runner, device))
                gc.collect()
        else:
            for runner in runners:
                for _ in range(args.steps):
                    runner.times.append(timed(runner, device, args.back_to_back))
                    gc.collect()
    finally:
        gc.enable()
        gc.unfreeze()
    if args.profile:
        for runner in runners:
            profile(runner, device, args.profile / f"{name}_{runner.name}.txt")
    for runner in runners:
        ms = [t * 1e3 for t in runner.times]
        results[runner.name] = {
            "kind": runner.kind,
            "ms_median": statistics.median(ms),
            "ms_min": min(ms),
            "ms": ms,
            "ms_one_step_median": statistics.median(runner.one_step_times) * 1e3 if runner.one_step_times else None,
            "warmup_ms": [t * 1e3 for t in runner.warmup_times],
            "loss_first": runner.losses[0] if runner.losses else None,
            "loss_last": runner.losses[-1] if runner.losses else None,
            "layer_impl": runner.impl,
            "compiled": runner.compiled,
            "interleaved": args.interleave,
            **runner.info,
        }
        log.info("%s/%s: median %.2f ms", name, runner.name, results[runner.name]["ms_median"])
    del runners, backbone, batch, emb
    gc.collect()
    if device.type == "cuda" and runner.compiled and runner.cuda_graphs:
        # a CUDA graph allocates its whole working set once, at capture, in a private pool: a replayed step
        # allocates nothing, so "resident + transient peak of one step" would understate it; not measured
        info["mem_method"] = "not measured: CUDA graphs (memory held in the graph pool since capture)"
    elif device.type == "cuda":
        torch.cuda.empty_cache()
    out = {"config": info, "batch": batch_size, "seq": args.seq, "build_s": build_s, "results": results}
    out["ratios"] = ratios(results)
    out["checks"] = checks(name, results, device.type, args.compile_mode)
    return out


# ------------------------------------------------------------------------------------------------------------
# ratios, targets, table
# ------------------------------------------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def time_ratio(results: dict[str, Any], name: str, ref: str) -> float | None:
    """Time of `name` over time of `ref`. Interleaved runs: the median of the per-round ratios (round i of both
    ran back to back, under the same machine load); otherwise the ratio of the medians."""
    a, b = results.get(name), results.get(ref)
    if not a or not b or "ms" not in a or "ms" not in b:
        return None
    if a.get("interleaved") and b.get("interleaved") and len(a["ms"]) == len(b["ms"]):
        return statistics.median(x / y for x, y in zip(a["ms"], b["ms"], strict=True))
    return _ratio(a["ms_median"], b["ms_median"])


def ratios(results: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """For every timed variant: time and peak memory relative to the floor (train) / base (inference) and LoRA."""
    ms = {k: v.get("ms_median") for k, v in results.items()}
    peak = {k: v.get("peak_bytes") for k, v in results.items()}
    out = {}
    for name, res in results.items():
        if res["kind"] == "train":
            ref, lora = "floor", "lora"
        elif res["kind"] == "infer":
            ref, lora = "infer-base", "infer-lora"
        else:
            continue
        out[name] = {
            "time_vs_floor": time_ratio(results, name, ref),
            "time_vs_lora": time_ratio(results, name, lora),
            "peak_vs_floor": _ratio(peak.get(name), peak.get(ref)),
            "peak_vs_lora": _ratio(peak.get(name), peak.get(lora)),
        }
        if res.get("compiled") and f"{ref}-compile" in ms:
            out[name]["time_vs_floor_compile"] = time_ratio(results, name, f"{ref}-compile")
    return out


# Targets per model: eager steps against the eager floor and PEFT LoRA; compiled steps by compile mode (the
# "default" mode users get from a bare torch.compile(), and "reduce-overhead" with CUDA graphs).
EAGER_FLOOR = {"smollm2-135m": 1.20, "llama-1b": 1.04}  # anything larger: 1.02
DEFAULT_COMPILE_FLOOR = {"smollm2-135m": 1.10}  # the issue sets no default-mode target for larger models
REDUCE_OVERHEAD_FLOOR = {"smollm2-135m": 1.10}  # anything larger: 1.03


def checks(model: str, results: dict[str, Any], device_type: str, compile_mode: str = "default") -> list[dict]:
    """The targets, evaluated on what was measured. GPU-only targets are 'info' on CPU."""
    out: list[dict[str, Any]] = []
    peak = {k: v.get("peak_bytes") for k, v in results.items()}
    ms = {k: v.get("ms_median") for k, v in results.items()}
    gpu = device_type == "cuda"

    def add(what: str, value: float | None, limit: float | None, applies: bool = True) -> None:
        if value is None or limit is None:
            return
        status = ("PASS" if value <= limit else "FAIL") if applies else "info"
        out.append({"check": what, "value": value, "target": limit, "status": status})

    for name in [k for k in results if k.startswith("curlora") and results[k]["kind"] == "train"]:
        # compiled variants are held against the compiled floor / LoRA where those were measured
        compiled = results[name].get("compiled")
        floor = "floor-compile" if compiled and "floor-compile" in ms else "floor"
        lora = "lora-compile" if compiled and "lora-compile" in ms else "lora"
        if not compiled:
            floor_target, lora_target = EAGER_FLOOR.get(model, 1.02), 0.80
        elif compile_mode == "reduce-overhead":
            floor_target, lora_target = REDUCE_OVERHEAD_FLOOR.get(model, 1.03), 0.85
        else:
            floor_target, lora_target = DEFAULT_COMPILE_FLOOR.get(model), None
        mode = "eager" if not compiled else f"compile {compile_mode}"
        add(f"{name} step / {floor} step ({mode}, GPU target)", time_ratio(results, name, floor), floor_target, gpu)
        add(f"{name} step / {lora} step ({mode}, GPU target)", time_ratio(results, name, lora), lora_target, gpu)
        add(f"{name} step / {lora} step (CPU target)", time_ratio(results, name, lora), 1.0, not gpu)
        add(f"{name} peak memory / {floor} peak" + ("" if gpu else " (CPU estimate)"),
            _ratio(peak.get(name), peak.get(floor)), 1.02)  # fmt: skip
    for suffix in ("", "-compile"):  # eager inference against the eager base, compiled against compiled
        add(f"infer-merged{suffix} / infer-base{suffix}",
            time_ratio(results, f"infer-merged{suffix}", f"infer-base{suffix}"), 1.01)  # fmt: skip
        add(f"infer-curlora{suffix} (unmerged) / infer-base{suffix}",
            time_ratio(results, f"infer-curlora{suffix}", f"infer-base{suffix}"), 1.03)  # fmt: skip
    if "disk" in results:
        add("curlora adapter file / lora adapter file", results["disk"]["ratio"], 0.01)
    return out


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def render(report: dict[str, Any]) -> str:
    lines = []
    s = report["settings"]
    lines.append(f"device: {report['env']['device_name']} ({s['device']}, {s['dtype']}, threads {s['threads']})")
    for model, m in report["models"].items():
        cfg = m["config"]
        lines.append("")
        lines.append(
            f"== {model}: {cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}, batch {m['batch']} × "
            f"seq {m['seq']}, rank {s['rank']} on {','.join(TARGET_MODULES)}; median of {s['steps']} steps"
            f"{'' if s.get('back_to_back', 1) == 1 else ', timed ' + str(s['back_to_back']) + ' back to back'} =="
        )
        lines.append(
            f"{'variant':<24}{'ms':>10}{'min ms':>10}{'×floor':>8}{'×lora':>8}{'peak MiB':>10}{'×floor':>8}"
            f"{'saved MiB':>10}  notes"
        )
        for name, res in m["results"].items():
            if res["kind"] == "disk":
                continue
            r = m["ratios"].get(name, {})
            peak = res.get("peak_bytes")
            saved = res.get("saved_for_backward_bytes")
            notes = []
            if res.get("compile_s") is not None:
                notes.append(f"compile {res['compile_s']:.1f}s, {res.get('graph_breaks', 0)} graph breaks")
            if res.get("profile_device_busy_ms") is not None:
                notes.append(f"GPU busy {res['profile_device_busy_ms']:.1f} ms/step")
            if r.get("time_vs_floor_compile") is not None:
                ref = "infer-base" if res["kind"] == "infer" else "floor"
                notes.append(f"×{ref}-compile {r['time_vs_floor_compile']:.3f}")
            if res.get("ms_one_step_median") is not None:
                notes.append(_one_step_note(m["results"], name))
            lines.append(
                f"{name:<24}{res['ms_median']:>10.2f}{res['ms_min']:>10.2f}{_fmt(r.get('time_vs_floor')):>8}"
                f"{_fmt(r.get('time_vs_lora')):>8}{_fmt(peak and peak / 2**20, '.1f'):>10}"
                f"{_fmt(r.get('peak_vs_floor')):>8}{_fmt(saved and saved / 2**20, '.1f'):>10}  {'; '.join(notes)}"
            )
        if "disk" in m["results"]:
            d = m["results"]["disk"]
            lines.append(
                f"adapter files: lora {d['lora_bytes']:,} B, curlora {d['curlora_bytes']:,} B, ratio {d['ratio']:.4f}"
            )
        for c in m["checks"]:
            lines.append(f"  [{c['status']:>4}] {c['check']}: {c['value']:.3f} (target <= {c['target']})")
    return "\n".join(lines)


def _one_step_note(results: dict[str, Any], name: str) -> str:
    """With --back-to-back: this variant's median when each step starts from an idle GPU, and its ratio to the
    reference (floor / infer-base, compiled or not as this variant) measured the same way."""
    res = results[name]
    ref = ("infer-base" if res["kind"] == "infer" else "floor") + ("-compile" if res.get("compiled") else "")
    one = res["ms_one_step_median"]
    ref_one = results.get(ref, {}).get("ms_one_step_median")
    return f"one step at a time {one:.2f} ms" + (f" (×{ref} {one / ref_one:.3f})" if ref_one else "")


# ------------------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------------------


def environment(device: torch.device) -> dict[str, Any]:
    import peft
    import transformers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    if device.type == "cpu":
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
        except OSError:
            pass
    return {
        "device_name": name,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "cuda": torch.version.cuda,
        "platform": platform.platform(),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="smollm2-135m", help=f"comma separated: {', '.join(MODELS)}")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma separated or 'all'; default {DEFAULT_VARIANTS}")
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant (default: cuda 20, cpu 5)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps per variant (default: cuda 5, cpu 2)")
    p.add_argument("--back-to-back", type=int, default=1, metavar="K",
                   help="each timing covers K steps queued without a sync between them, per-step time reported "
                        "(default 1: every step from an idle GPU, host overhead in full)")  # fmt: skip
    p.add_argument("--batch", type=int, default=None, help="batch size for every model (default: per model)")
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--layers", type=int, default=None, help="truncate num_hidden_layers (fast smoke runs)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode (default: 'default')")
    p.add_argument("--cold-compile", action="store_true", help="disable inductor's caches (cold compile times)")
    p.add_argument("--no-interleave", dest="interleave", action="store_false",
                   help="time each variant's steps back to back instead of round-robin")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    p.add_argument("--profile", type=Path, default=None, help="folder: torch.profiler tables, one per variant")
    p.add_argument("--render", type=Path, default=None, help="only print the tables of a saved JSON report")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    args.steps = args.steps or (20 if cuda else 5)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 2)
    if args.back_to_back < 1:
        p.error("--back-to-back must be >= 1 (steps queued between two synchronisations)")
    if args.warmup < 1:
        p.error("--warmup must be >= 1 (the first call allocates optimizer state and compiles)")
    for m in args.models.split(","):
        if m not in MODELS:
            p.error(f"unknown model {m!r}; choose from {', '.join(MODELS)}")
    return args


def rerender(path: Path) -> dict[str, Any]:
    """Print the tables of a saved report, with ratios and checks recomputed from its measurements."""
    report = json.loads(path.read_text(encoding="utf-8"))
    settings = report["settings"]
    graphs = settings["device"].startswith("cuda") and settings.get("compile_mode") in CUDA_GRAPH_MODES
    for name, m in report["models"].items():
        for res in m["results"].values():
            if graphs and res.get("compiled"):  # reports from before CUDA-graph peaks were left unmeasured
                res.pop("peak_bytes", None)
        m["ratios"] = ratios(m["results"])
        m["checks"] = checks(name, m["results"], settings["device"], settings.get("compile_mode", "default"))
    print(render(report))
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.render:
        return rerender(args.render)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    if args.cold_compile:
        from torch._inductor import config as inductor_config

        inductor_config.force_disable_caches = True
    variants = ALL_VARIANTS if args.variants == "all" else [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if split_compile(v)[0] not in INFER_VARIANTS and v != "disk":
            parse_variant(v)
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:] if argv is None else argv,
        "env": environment(device),
        "settings": {
            "device": args.device,
            "dtype": str(dtype).removeprefix("torch."),
            "steps": args.steps,
            "back_to_back": args.back_to_back,
            "warmup": args.warmup,
            "seq": args.seq,
            "rank": args.rank,
            "layers": args.layers,
            "threads": torch.get_num_threads(),
            "compile_mode": args.compile_mode,
            "cold_compile": args.cold_compile,
            "interleave": args.interleave,
            "target_modules": TARGET_MODULES,
            "variants": variants,
        },
        "models": {},
    }
    for name in args.models.split(","):
        report["models"][name] = run_model(name, args, device, dtype, variants)
        if args.out:  # written after every model, so a later failure keeps what was measured
            atomic_write_json(args.out, finite_or_null(report))
    report["env"]["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    if args.out:
        atomic_write_json(args.out, finite_or_null(report))
    print(render(report))
    return report


if __name__ == "__main__":
    main()
