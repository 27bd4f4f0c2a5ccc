"""Training steps per second of Hugging Face's `Trainer`, run the way a user runs it, on the built-in SmolLM2-135M:
CURLoRA, PEFT LoRA (r 16 on q/k/v, each) and head_only (frozen backbone, only the classification head trains),
eager and with `TrainingArguments(torch_compile=True)`.

Sequence classification of SST-2 sentences (GLUE layout under --data-dir; the built-in VADER movie snippets
otherwise), batch 8, padded per batch (`DataCollatorWithPadding`), AdamW, no evaluation or saving. A callback
timestamps every optimizer step; steps/s counts the steps after --warmup (so compilation is left out and reported
as the warm-up's time). Configurations run one after another in rounds, the order rotated each round, and the table
reports the median over rounds with each method's ratio to head_only of the same mode. Each run also records how
many graphs torch.compile made and how many graph breaks it hit (zero in eager mode). `--methods` also takes
`curlora-ungrouped` (CURLoRA with its q/k/v groups unlinked, each projection computing its own adapter) and
`curlora-xr` (x·Rᵀ as a GEMM of its own: `CURLoRAConfig(reuse_base_output=False)`, no groups).

    python perf/trainer_bench.py --device cpu --steps 30 --warmup 5 --rounds 2 --modes eager --out trainer.json
    python perf/trainer_bench.py --device cpu --model tiny --modes compile --steps 16 --warmup 4 --rounds 1
    python perf/trainer_bench.py --device cuda --steps 200 --warmup 20 --rounds 3 --out docs/perf/trainer/135m.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

import curlora
from curlora.files import atomic_write_json
from curlora.models.builtin import ensure_builtin_model
from curlora.testing import save_tiny_model

METHODS = ("curlora", "lora", "head_only")
TARGETS = ["q_proj", "k_proj", "v_proj"]


def sentences(data_dir: str | None, n: int) -> list[tuple[str, int]]:
    if data_dir:
        from curlora.data.paper import read_sst2

        rows = read_sst2(Path(data_dir) / "glue" / "SST-2" / "train.tsv")
        return [(ex.text, ex.label) for ex in rows[:n]]
    from curlora.data import load_suite

    suite = load_suite("builtin")
    return [(ex.text, ex.label) for ex in suite.tasks[0].train[:n]]


class StepClock(TrainerCallback):
    def __init__(self, device: str):
        self.times: list[float] = []
        self.cuda = device.startswith("cuda")

    def on_step_end(self, args, state, control, **kwargs):
        if self.cuda:  # the step's kernels are done: a step is what the GPU finished, not what the host queued
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def build(method: str, folder: Path):
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2, dtype=torch.float32)
    model.config.pad_token_id = model.config.pad_token_id or model.config.eos_token_id
    if method.startswith("curlora"):
        reuse = method != "curlora-xr"  # curlora-xr: x·Rᵀ as its own GEMM, never taken from the base output
        config = curlora.CURLoRAConfig(r=16, target_modules=TARGETS, task_type="SEQ_CLS", reuse_base_output=reuse)
        peft_model = get_peft_model(model, config)
        if method == "curlora-ungrouped":  # each projection on its own (the q/k/v groups unlinked)
            for module in peft_model.modules():
                if hasattr(module, "_shared_input_group"):
                    module._shared_input_group = None
        return peft_model
    if method == "lora":
        return get_peft_model(model, LoraConfig(r=16, lora_alpha=16, target_modules=TARGETS, task_type="SEQ_CLS"))
    model.requires_grad_(False)
    model.score.requires_grad_(True)
    return model


def one_run(method: str, compiled: bool, args, folder: Path, dataset, tokenizer) -> dict:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # every compiled run compiles from scratch: its warm-up time and graph count are its own
    counters.clear()
    torch.manual_seed(0)
    model = build(method, folder)
    clock = StepClock(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=args.batch_size, max_steps=args.steps, learning_rate=1e-3,
            logging_strategy="no", save_strategy="no", report_to=[], torch_compile=compiled,
            use_cpu=args.device == "cpu", bf16=args.device.startswith("cuda"), dataloader_num_workers=0,
            disable_tqdm=True, seed=0,
        )
        trainer = Trainer(model=model, args=targs, train_dataset=dataset,
                          data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=args.pad_to_multiple_of),
                          callbacks=[clock])
        t0 = time.perf_counter()
        trainer.train()
    times = [t0, *clock.times]
    timed = times[args.warmup:]
    return {
        "method": method,
        "mode": "compile" if compiled else "eager",
        "steps_per_s": (len(timed) - 1) / (timed[-1] - timed[0]),
        "warmup_s": times[args.warmup] - t0,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        # per-batch padding gives a new sequence length almost every step: a method that compiled a graph per
        # length would show it here (dynamo compiles one static graph, then one with a dynamic length)
        "graphs_compiled": counters["stats"].get("unique_graphs", 0),
        "graph_breaks": sum(counters["graph_break"].values()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data-dir", default=None, help="Folder with glue/SST-2/train.tsv (else the built-in VADER data).")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--modes", default="eager,compile")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--pad-to-multiple-of", type=int, default=None,
                   help="pad each batch to a multiple of this length (fewer shapes for torch.compile)")
    p.add_argument("--model", default="builtin", choices=["builtin", "tiny"],
                   help="the built-in SmolLM2-135M, or a tiny random-init Llama (compile behaviour on a CPU)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.warmup + 2 > args.steps:
        p.error("--steps must exceed --warmup by at least 2")
    folder = ensure_builtin_model() if args.model == "builtin" else save_tiny_model(Path(tempfile.mkdtemp()) / "tiny")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    rows = sentences(args.data_dir, args.steps * args.batch_size)
    enc = tokenizer([t for t, _ in rows], truncation=True, max_length=args.max_length)
    dataset = [{"input_ids": ids, "attention_mask": m, "labels": y}
               for ids, m, (_, y) in zip(enc["input_ids"], enc["attention_mask"], rows, strict=True)]
    configs = [(m, mode == "compile") for mode in args.modes.split(",") for m in args.methods.split(",")]
    runs: list[dict] = []
    for k in range(args.rounds):
        for method, compiled in configs[k % len(configs):] + configs[: k % len(configs)]:
            runs.append(one_run(method, compiled, args, folder, dataset, tokenizer) | {"round": k})
            if args.out:  # every finished run is kept, so a run cut short by a time limit still reports
                atomic_write_json(args.out, report(args, configs, runs))
    rep = report(args, configs, runs)
    print(f"{'method/mode':<22}{'steps/s':>10}{'vs head_only':>14}{'warm-up s':>11}{'trainable':>12}{'graphs':>8}")
    for key, row in rep["summary"].items():
        ratio = f"{row['vs_head_only']:.3f}" if row["vs_head_only"] else "—"
        print(f"{key:<22}{row['steps_per_s']:>10.2f}{ratio:>14}{row['warmup_s']:>11.1f}{row['trainable_params']:>12,}"
              f"{row['graphs_compiled']:>8}")
    if args.out:
        atomic_write_json(args.out, rep)


def report(args, configs: list[tuple[str, bool]], runs: list[dict]) -> dict:
    summary = {}
    for method, compiled in configs:
        mine = [r for r in runs if r["method"] == method and r["mode"] == ("compile" if compiled else "eager")]
        if not mine:
            continue
        summary[f"{method}/{mine[0]['mode']}"] = {
            "steps_per_s": statistics.median(r["steps_per_s"] for r in mine),
            "warmup_s": statistics.median(r["warmup_s"] for r in mine),
            "trainable_params": mine[0]["trainable_params"],
            "graphs_compiled": max(r.get("graphs_compiled", 0) for r in mine),
            "graph_breaks": max(r.get("graph_breaks", 0) for r in mine),
        }
    for key, row in summary.items():
        floor = summary.get(f"head_only/{key.split('/')[1]}")
        row["vs_head_only"] = row["steps_per_s"] / floor["steps_per_s"] if floor else None
    return {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__, "settings": {k: v for k, v in vars(args).items() if k != "out"} | {
            "out": str(args.out) if args.out else None},
        "summary": summary, "runs": runs,
    }


if __name__ == "__main__":
    main()
