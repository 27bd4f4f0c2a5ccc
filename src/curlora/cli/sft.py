"""`curlora sft`: SQuAD question answering with CURLoRA / LoRA through TRL's SFTTrainer, with EM/F1 and perplexity."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer
from rich.table import Table

from curlora.cli._ui import RichReporter, console, csv


def _print_table(results: dict) -> None:
    before = results["ppl"]["before"]
    table = Table(title=f"curlora sft: held-out SQuAD questions; perplexity of the base model {before:.3f}")
    table.add_column("method", no_wrap=True)
    for col in ("trainable", "EM", "F1", "ppl after", "Δppl", "steps", "train s"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in results["methods"]:
        table.add_row(
            r["label"],
            f"{r.get('trainable_params', 0):,}",
            f"{r['exact_match']:.2f}",
            f"{r['f1']:.2f}",
            f"{r['ppl_after']:.3f}",
            f"{r['ppl_change_pct']:+.2f}%",
            str(r.get("train_steps", "–")),
            f"{r['train_s']:.0f}" if "train_s" in r else "–",
        )
    console.print(table)


def sft(
    data: str = typer.Option(
        ..., help="Official SQuAD JSON file (v1.1 or v2.0), or a hub dataset id such as rajpurkar/squad_v2."
    ),
    model: str = typer.Option("smollm2-135m", help="Built-in smollm2-135m, a local folder or a Hugging Face id."),
    method: str = typer.Option(
        "curlora", help="Comma-separated: none (base model only), curlora, lora, or with a rank: curlora-8,lora-16."
    ),
    out: Path = typer.Option(Path("runs/sft"), help="Run folder: results.json, results.md, checkpoints."),
    data_split: str = typer.Option("validation", help="Split to use when --data is a hub id."),
    eval_articles: float = typer.Option(
        1, help="Held-out articles (the last ones in the file): a count, or a fraction such as 0.2."
    ),
    train_articles: int | None = typer.Option(None, help="Train on at most this many articles (the first ones)."),
    max_train_questions: int | None = typer.Option(None, help="Seeded subset of training questions."),
    eval_questions: int | None = typer.Option(None, help="Seeded subset of N held-out questions (default: all)."),
    keep_unanswerable: bool = typer.Option(
        False, help="Train and score SQuAD 2.0 unanswerable questions (answer 'unanswerable'); default: skip them."
    ),
    template: str = typer.Option(
        "Context: {context}\\nQuestion: {question}\\nAnswer:",
        help="Prompt template with {context} and {question}; \\n is a newline.",
    ),
    rank: int = typer.Option(16, help="Rank for curlora/lora without an explicit -R."),
    alpha: float = typer.Option(1.0, help="Adapter scale (CURLoRA α; LoRA lora_alpha = α·r)."),
    sampling: str = typer.Option("inverted", help="CURLoRA column/row selection."),
    lr: float | None = typer.Option(
        None, help="Learning rate of every method (default 1e-3); per method: curlora-16:lr=2e-3."
    ),
    epochs: float = typer.Option(1.0),
    max_steps: int | None = typer.Option(None, help="Stop after N optimizer steps (overrides --epochs)."),
    batch_size: int = typer.Option(8, help="Global batch: split evenly over the processes of accelerate launch."),
    grad_accum: int = typer.Option(1),
    max_length: int = typer.Option(512, help="Token limit of prompt + answer; longer contexts are cut."),
    max_new_tokens: int = typer.Option(32, help="Longest generated answer."),
    eval_batch_size: int = typer.Option(32),
    ppl_max_tokens: int = typer.Option(16384, help="Score the first N tokens of the general text (0: all)."),
    ppl_max_length: int = typer.Option(512, help="Perplexity window."),
    ppl_stride: int = typer.Option(256, help="Perplexity stride."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    dtype: str = typer.Option("auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16."),
    quantize: str | None = typer.Option(None, help="4bit (nf4, QLoRA) or 8bit (LLM.int8()) base; needs bitsandbytes."),
    save_steps: int = typer.Option(50, help="Checkpoint every N steps."),
    resume: bool = typer.Option(
        False, help="Continue a run in --out: finished methods are reused, training resumes from the last checkpoint."
    ),
    overwrite: bool = typer.Option(False, help="Delete --out first."),
) -> None:
    """Fine-tune a causal LM on SQuAD with CURLoRA (TRL SFTTrainer); report EM/F1 and forgetting."""
    from curlora.distributed import is_main_process
    from curlora.recipes.sft import SFTRecipeConfig, SFTRun

    config = SFTRecipeConfig(
        data=data,
        model=model,
        data_split=data_split,
        methods=csv(method),
        rank=rank,
        alpha=alpha,
        sampling=sampling,
        lr=lr,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        grad_accum=grad_accum,
        max_length=max_length,
        template=template.replace("\\n", "\n"),
        keep_unanswerable=keep_unanswerable,
        eval_articles=eval_articles,
        train_articles=train_articles,
        max_train_questions=max_train_questions,
        eval_questions=eval_questions,
        max_new_tokens=max_new_tokens,
        eval_batch_size=eval_batch_size,
        ppl_max_tokens=ppl_max_tokens or None,
        ppl_max_length=ppl_max_length,
        ppl_stride=ppl_stride,
        seed=seed,
        device=device,
        dtype=dtype,
        quantize=quantize,
        save_steps=save_steps,
    )
    main = is_main_process()  # under accelerate launch / torchrun, rank 0 alone prints
    if not main:
        logging.getLogger().setLevel(logging.WARNING)  # the other ranks' info lines repeat rank 0's
    if main:
        console.print(f"[bold]curlora sft[/] model={config.model} data={config.data} methods={method} → {out}")
    reporter = RichReporter(stop_between_bars=True) if main else None
    try:
        runner = SFTRun(config, out, reporter=reporter, progress_bars=main, resume=resume, overwrite=overwrite)
        results = runner.run()
    finally:
        if reporter is not None:
            reporter.close()
    if not main:
        return
    data_info = results["data"]
    skipped = data_info["train_build"]["skipped"]
    console.print(
        f"train: {data_info['train_examples']} questions from {', '.join(data_info['train_articles'])} "
        f"({data_info['train_build']['truncated']} contexts cut; skipped {json.dumps(skipped)}); "
        f"eval: {data_info['eval_examples']} questions from {', '.join(data_info['eval_articles'])}"
    )
    _print_table(results)
    console.print(f"results: {out / 'results.json'}, {out / 'results.md'}")
