"""TRL's SFTTrainer, configured for prompt/completion QA with a PEFT model (CURLoRA or LoRA)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from curlora.errors import CurloraError
from curlora.recipes.sft.qa import QAExample

log = logging.getLogger(__name__)


def to_dataset(examples: list[QAExample]):
    """A `datasets.Dataset` in TRL's prompt/completion format (the completion already ends with eos)."""
    _trl()
    from datasets import Dataset

    return Dataset.from_list([{"prompt": e.prompt, "completion": e.completion} for e in examples])


def _trl():
    """TRL and datasets are the `sft` extra: say how to get them instead of a bare ImportError."""
    try:
        import datasets  # noqa: F401
        import trl
    except ImportError as err:
        raise CurloraError(
            f"curlora sft needs TRL and datasets ({err.name} is missing); install them: pip install 'curlora[sft]'"
        ) from None
    return trl


def _checkpointing_arg() -> str:
    # transformers 5.2x renamed TrainingArguments.gradient_checkpointing to activation_checkpointing
    SFTConfig = _trl().SFTConfig  # noqa: N806

    names = {f.name for f in dataclasses.fields(SFTConfig)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def build_trainer(
    model,
    tokenizer,
    examples: list[QAExample],
    output_dir: str | Path,
    *,
    lr: float,
    epochs: float = 1.0,
    max_steps: int | None = None,
    batch_size: int = 8,
    grad_accum: int = 1,
    warmup_ratio: float = 0.1,
    weight_decay: float = 0.0,
    max_length: int = 512,
    seed: int = 0,
    bf16: bool = False,
    use_cpu: bool = False,
    save_steps: int = 50,
    save_total_limit: int | None = 2,
    logging_steps: int = 10,
    progress_bars: bool = False,
    callbacks: list | None = None,
):
    """A `trl.SFTTrainer` for `model` (a PeftModel: CURLoRA or LoRA) on prompt/completion `examples`.

    Loss on the completion only (``completion_only_loss=True``); batches padded to their longest example;
    checkpoints (adapter + optimizer + scheduler + RNG state) every `save_steps` steps under `output_dir`.
    """
    trl = _trl()
    SFTConfig, SFTTrainer = trl.SFTConfig, trl.SFTTrainer  # noqa: N806

    if not examples:
        raise CurloraError("the training set is empty; nothing to fine-tune on")
    args = SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        max_steps=max_steps if max_steps is not None else -1,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=grad_accum,
        learning_rate=lr,
        lr_scheduler_type="cosine",
        warmup_steps=warmup_ratio,
        weight_decay=weight_decay,
        max_length=max_length,
        completion_only_loss=True,
        packing=False,
        **{_checkpointing_arg(): False},
        bf16=bf16,
        fp16=False,
        use_cpu=use_cpu,
        seed=seed,
        data_seed=seed,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=save_total_limit,
        logging_steps=logging_steps,
        eval_strategy="no",
        report_to="none",
        disable_tqdm=not progress_bars,
        dataloader_num_workers=0,
        # every adapter parameter gets a gradient in every step: DDP need not search the graph for unused ones
        # (the Trainer would turn the search on for a PeftModel, which costs a graph traversal per step)
        ddp_find_unused_parameters=False,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=to_dataset(examples),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    if not progress_bars:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # library code stays quiet; the CLI asks for the bars
    kept = len(trainer.train_dataset)
    if kept != len(examples):  # our contexts are cut to fit, so TRL should never need to drop one
        log.warning("SFTTrainer dropped %d of %d training examples", len(examples) - kept, len(examples))
    return trainer


def _no_library_bars() -> None:
    """No progress bars from transformers (weights loading) and datasets (TRL's preprocessing) in this process."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        import datasets
    except ImportError:  # reported with an install hint when the trainer is built
        return
    datasets.disable_progress_bars()
