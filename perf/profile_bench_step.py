"""Profile the bench's training step on one GPU with a random-init SmolLM2-135M (no weights needed).

Usage: python perf/profile_bench_step.py [--steps 40]. Prints ms/step per variant and the top ops.
"""

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from peft import get_peft_model
from transformers import LlamaForCausalLM

import curlora
from curlora.recipes.bench.classify import Encoded, backbone_of, batches, pooled_hidden
from curlora.testing import architecture_config

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=40)
p.add_argument("--profile", action="store_true")
args = p.parse_args()
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
cfg = architecture_config("smollm2-135m")
torch.manual_seed(0)
base = LlamaForCausalLM(cfg).to(dev, dtype).eval().requires_grad_(False)
g = torch.Generator().manual_seed(0)
lengths = torch.randint(10, 80, (1000,), generator=g).tolist()
data = Encoded(
    ids=[torch.randint(5, 49000, (n,), generator=g).tolist() for n in lengths], labels=[i % 2 for i in range(1000)]
)


def step_loop(model, autocast, n):
    head = torch.nn.Linear(576, 2).to(dev)
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)
    bb = backbone_of(model)
    model.train()
    it = batches(data, 8, 2, generator=torch.Generator().manual_seed(0))
    times = []
    for k, (ids, mask, labels, _) in enumerate(it):
        if k == n:
            break
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        ctx = torch.autocast(dev.type, dtype=dtype) if autocast else torch.autocast(dev.type, enabled=False)
        with ctx:
            pooled = pooled_hidden(bb, ids.to(dev), mask.to(dev))
            logits = head(pooled.float())
        loss = F.cross_entropy(logits.float(), labels.to(dev))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        times.append(time.perf_counter() - t)
    times = sorted(times[5:])
    return 1000 * times[len(times) // 2]


variants = {
    "head_only (no grad through model)": lambda m: m,
    "curlora-16": lambda m: get_peft_model(m, curlora.CURLoRAConfig(r=16)),
    "lora-16": lambda m: get_peft_model(m, curlora.lora_config(16)),
}
for name, wrap in variants.items():
    for ac in (True, False):
        model = wrap(copy.deepcopy(base))
        if name.startswith("head_only"):
            # floor: gradients must flow through the backbone, so make the embeddings' output require grad
            model.get_input_embeddings().register_forward_hook(lambda mod, i, o: o.requires_grad_(True))
        print(f"{name:40s} autocast={ac}: {step_loop(model, ac, args.steps):7.1f} ms/step", flush=True)
if args.profile:
    from torch.profiler import ProfilerActivity, profile

    model = get_peft_model(copy.deepcopy(base), curlora.CURLoRAConfig(r=16))
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        step_loop(model, True, 12)
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25))
