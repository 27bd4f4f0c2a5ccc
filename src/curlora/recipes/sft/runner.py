"""Question answering with CURLoRA (or LoRA) through TRL's SFTTrainer, on SQuAD-format data.

For every method, from the same base weights and the same data:
  1. split the articles: train on the first ones, evaluate on the held-out last ones (deterministic);
  2. build prompt/completion pairs ("Context: …\\nQuestion: …\\nAnswer:" → " answer<eos>"), cutting contexts that
     are too long (never the question or the answer; examples whose answer would be cut are skipped and counted);
  3. wrap a fresh copy of the base model with `peft.get_peft_model(model, CURLoRAConfig(...))` (or LoRA), train it
     with `trl.SFTTrainer` (completion-only loss, dynamic padding, bf16 autocast on CUDA), checkpointing real PEFT
     adapters that `PeftModel.from_pretrained` loads (CURLoRA rebuilds C and R from the saved indices);
  4. greedy-generate answers to the held-out questions and score them with the official SQuAD EM/F1;
  5. perplexity on general text (the bench's NYT editorials) before and after, so forgetting shows.
Method ``none`` only evaluates the base model. Results go to ``results.json`` and ``results.md`` (atomic writes);
the predictions of each method to ``predictions-<label>.json``.

Under ``accelerate launch`` / ``torchrun`` (several processes, DDP) every rank trains on its share of each global
batch (``--batch-size`` stays the global batch), rank 0 alone evaluates and writes while the others wait, and
every rank returns rank 0's results; docs/DISTRIBUTED.md describes it.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import torch

from curlora import distributed
from curlora.data.squad import count_questions, load_squad, sample_questions, split_articles
from curlora.errors import CurloraError
from curlora.files import atomic_write_json, atomic_write_text, finite_or_null, safe_name
from curlora.methods import MethodSpec, check_rank_fits, wrap_model
from curlora.models.load import load_model
from curlora.recipes.common import (
    Reporter,
    claim_run_folder,
    environment,
    newest_intact_checkpoint,
    perplexity_stage,
    resolve_device,
    settings_diff,
)
from curlora.recipes.sft.config import DEFAULT_LR, SFTRecipeConfig, parse_sft_methods
from curlora.recipes.sft.qa import PromptBuilder, QAExample, build_examples, evaluate_qa
from curlora.recipes.sft.trainer import _no_library_bars, build_trainer, to_dataset
from curlora.reports.sft import render_markdown
from curlora.tuner.config import default_target_modules
from curlora.tuner.saved import write_checksums

log = logging.getLogger(__name__)
SCHEMA = "curlora-sft/1"

__all__ = [
    "DEFAULT_LR",
    "SFTRecipeConfig",
    "SFTRun",
    "build_trainer",
    "parse_sft_methods",
    "run_sft",
    "to_dataset",
]


class SFTRun:
    """One `curlora sft` run into `out_dir`. Pass `model`/`tokenizer` to skip loading (tests), `ppl_text` to use
    another general text than the bench's NYT editorials, `reporter` for evaluation progress."""

    def __init__(
        self,
        config: SFTRecipeConfig,
        out_dir: str | Path,
        *,
        model=None,
        tokenizer=None,
        ppl_text: str | None = None,
        ppl_name: str | None = None,
        reporter: Reporter | None = None,
        progress_bars: bool = False,
        resume: bool = False,
        overwrite: bool = False,
    ) -> None:
        config.validate()
        self.config = config
        self.out = Path(out_dir)
        self.reporter = reporter or Reporter()
        self.progress_bars = progress_bars
        self.resume = resume
        self.specs = parse_sft_methods(config.methods, config.rank)
        self.device, self.dtype = resolve_device(config.device, config.dtype)
        world = distributed.launched_world_size()
        # one process: the trainer uses the first visible GPU; several: each uses cuda:LOCAL_RANK (checked by
        # distributed.setup, which refuses any other explicit index)
        other_gpu = world <= 1 and self.device.type == "cuda" and self.device.index not in (None, 0)
        if self.device.type not in ("cpu", "cuda") or other_gpu:
            raise CurloraError(
                f"--device {config.device}: the trainer runs on cpu or the first visible GPU; "
                "pick a GPU with CUDA_VISIBLE_DEVICES instead"
            )
        if self.dtype == torch.float16:
            raise CurloraError("float16 training is not supported here; use bfloat16 (the default on CUDA) or float32")
        if config.batch_size % world:
            raise CurloraError(
                f"--batch-size {config.batch_size} is the global batch, split evenly over the {world} processes: "
                f"pass a multiple of {world}"
            )
        self.overwrite = overwrite
        self._check_out()
        self._ppl_text, self._ppl_name = ppl_text, ppl_name
        self._model, self._tokenizer = model, tokenizer
        # under accelerate launch / torchrun: join the process group and make cuda:LOCAL_RANK this process's
        # device now, before any model is placed (no rank puts a copy on GPU 0); a no-op for one process
        self.dist, self.device = distributed.setup(self.device)
        self._group = None
        if self.dist.enabled:
            # waits and small exchanges go through a gloo group with a long timeout: the other ranks may wait for
            # rank 0's evaluation for longer than an NCCL collective is allowed to take
            self._group = torch.distributed.new_group(backend="gloo", timeout=timedelta(hours=24))
        if not self.dist.is_main:  # rank 0 alone reports and shows progress bars
            self.reporter, self.progress_bars = Reporter(), False
            _no_library_bars()

    # -- several processes -------------------------------------------------------------------------------------
    def _wait(self) -> None:
        """Every rank waits here until all have arrived (e.g. while rank 0 evaluates); a no-op for one process."""
        distributed.barrier(self.dist, group=self._group)

    def _mean_over_ranks(self, value: float) -> float:
        total = distributed.sum_over_ranks_(torch.tensor([value], dtype=torch.float64), self.dist, group=self._group)
        return total.item() / self.dist.world_size

    def _from_rank0(self, obj: Any) -> Any:
        if not self.dist.enabled:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0, group=self._group)
        return box[0]

    # -- the run folder ----------------------------------------------------------------------------------------
    def _check_out(self) -> None:
        """Refuse a folder that holds another run, before anything is loaded (nothing is written here)."""
        if self.overwrite:
            return
        diff = settings_diff(self.out, self.config.result_key(), ignore=("methods",))
        if diff is None:
            return
        if not self.resume:
            raise CurloraError(
                f"{self.out} already holds a run; pass --resume to continue it, --overwrite to start over, "
                "or another --out"
            )
        if diff:
            raise CurloraError(
                f"{self.out} holds a run with other settings (differs in: {', '.join(diff)}); "
                "--resume needs the same settings; pass --overwrite to start over or another --out"
            )

    def _start_out(self) -> None:
        """Called once data and model are loaded: clear the folder for --overwrite, record the settings (rank 0;
        the others wait until it has)."""
        if self.dist.is_main:
            self._lock = claim_run_folder(
                self.out,
                self.config.result_key(),
                overwrite=self.overwrite,
                reporter=self.reporter,
                ignore=("methods",),
            )
        self._wait()

    # -- pieces -------------------------------------------------------------------------------------------------
    def _load(self):
        if self._model is None:
            quantize = self.config.quantize  # placed and cast by from_pretrained: bnb models refuse .to(dtype)
            kw = dict(quantize=quantize, dtype=self.dtype, device=self.device) if quantize else {}
            self._model, self._tokenizer = load_model(self.config.model, **kw)
        elif self._tokenizer is None:
            raise CurloraError("pass the tokenizer together with the model")
        tok = self._tokenizer
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        base = self._model
        if not getattr(base, "is_quantized", False):
            base = base.to(self.device, dtype=self.dtype)
        base = base.eval().requires_grad_(False)
        return base, tok

    def _ppl_ids(self, tokenizer) -> tuple[torch.Tensor, str]:
        if self._ppl_text is None:
            from curlora.data import load_suite

            suite = load_suite("builtin")
            self._ppl_text, self._ppl_name = suite.ppl_text, suite.ppl_name
        ids = tokenizer(self._ppl_text, return_tensors="pt", add_special_tokens=False, verbose=False)["input_ids"]
        if self.config.ppl_max_tokens:
            ids = ids[:, : self.config.ppl_max_tokens]
        return ids, self._ppl_name or "custom text"

    def _perplexity(self, model, ids: torch.Tensor, what: str) -> dict:
        cfg = self.config
        return perplexity_stage(
            model,
            ids,
            max_length=cfg.ppl_max_length,
            stride=cfg.ppl_stride,
            device=self.device,
            reporter=self.reporter,
            what=what,
        )

    def _evaluate(self, model, tokenizer, examples: list[QAExample], what: str) -> dict:
        cfg = self.config
        self.reporter.bar(what, len(examples))
        try:
            return evaluate_qa(
                model,
                tokenizer,
                examples,
                batch_size=cfg.eval_batch_size,
                max_new_tokens=cfg.max_new_tokens,
                device=self.device,
                no_answer=cfg.no_answer if cfg.keep_unanswerable else None,
                progress=lambda n, _total: self.reporter.advance(n),
            )
        finally:
            self.reporter.end_bar()

    def _articles(self) -> tuple[list, list, int]:
        cfg = self.config
        articles = load_squad(cfg.data, split=cfg.data_split)
        train_arts, eval_arts = split_articles(
            articles, eval_articles=cfg.eval_articles, train_articles=cfg.train_articles
        )
        return train_arts, eval_arts, len(articles)

    def _data(self, tokenizer, train_arts: list, eval_arts: list, n_articles: int) -> dict:
        cfg = self.config
        train_qs = sample_questions([q for a in train_arts for q in a.questions], None, cfg.seed)
        if cfg.max_train_questions is not None:
            pool = [q for q in train_qs if cfg.keep_unanswerable or not q.is_impossible]
            train_qs = sample_questions(pool, cfg.max_train_questions, cfg.seed)
        eval_pool = [q for a in eval_arts for q in a.questions if cfg.keep_unanswerable or not q.is_impossible]
        builder = PromptBuilder(tokenizer, template=cfg.template, max_length=cfg.max_length, no_answer=cfg.no_answer)
        train_ex, train_stats = build_examples(builder, train_qs, train=True, keep_unanswerable=cfg.keep_unanswerable)
        eval_ex, eval_stats = build_examples(
            builder, eval_pool, train=False, keep_unanswerable=cfg.keep_unanswerable, reserve=cfg.max_new_tokens
        )
        # the subset is drawn after truncation, so --eval-questions N gives N scored questions when possible
        eval_ex = sample_questions(eval_ex, cfg.eval_questions, cfg.seed + 1)
        return {
            "train": train_ex,
            "eval": eval_ex,
            "summary": {
                "source": str(cfg.data),
                "articles": n_articles,
                "train_articles": [a.title for a in train_arts],
                "eval_articles": [a.title for a in eval_arts],
                "train_pool": count_questions(train_arts),
                "eval_pool": count_questions(eval_arts),
                "train_build": train_stats.as_dict(),
                "eval_build": eval_stats.as_dict(),
                "train_examples": len(train_ex),
                "eval_examples": len(eval_ex),
                "truncation": "context cut at a word end (its beginning kept); examples whose answer is cut skipped",
                "unanswerable": (
                    f"trained and scored with the answer {cfg.no_answer!r} (= no answer)"
                    if cfg.keep_unanswerable
                    else "skipped"
                ),
            },
        }

    def _train_method(self, spec: MethodSpec, base, tokenizer, train_ex: list[QAExample]) -> tuple[Any, dict, bool]:
        """Train one method (every rank takes part); returns the trained model, its record and whether the
        trainer sharded it (FSDP: evaluating it then needs every rank)."""
        cfg = self.config
        run_dir = self.out / "runs" / safe_name(spec.label)
        model = copy.deepcopy(base)
        targets = list(cfg.target_modules or default_target_modules(getattr(base.config, "model_type", None)))
        check_rank_fits(model, spec, targets)
        torch.manual_seed(cfg.seed)  # LoRA's A is random; CURLoRA's selection has its own seed
        model = wrap_model(model, spec, target_modules=targets, alpha=cfg.alpha, sampling=cfg.sampling, seed=cfg.seed)
        lr = spec.lr if spec.lr is not None else (cfg.lr if cfg.lr is not None else DEFAULT_LR[spec.method])
        if self.dist.enabled and self.dist.is_main and len(train_ex) % cfg.batch_size:
            log.warning(
                "%d training examples are not a multiple of the global batch %d: with %d processes, the last batch "
                "of each epoch is filled up with examples from the start of the epoch (accelerate's even_batches), "
                "so that step differs slightly from one process's",
                len(train_ex), cfg.batch_size, self.dist.world_size,
            )  # fmt: skip
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        trainer = build_trainer(
            model,
            tokenizer,
            train_ex,
            run_dir,
            lr=lr,
            epochs=cfg.epochs,
            max_steps=cfg.max_steps,
            batch_size=cfg.batch_size // self.dist.world_size,  # per process: the global batch is the same
            grad_accum=cfg.grad_accum,
            warmup_ratio=cfg.warmup_ratio,
            weight_decay=cfg.weight_decay,
            max_length=cfg.max_length,
            seed=cfg.seed,
            bf16=self.dtype == torch.bfloat16,
            use_cpu=self.device.type == "cpu",
            save_steps=cfg.save_steps,
            save_total_limit=cfg.save_total_limit,
            logging_steps=cfg.logging_steps,
            progress_bars=self.progress_bars,
        )
        resume_from = None
        if self.resume and run_dir.is_dir():
            resume_from, skipped = newest_intact_checkpoint(run_dir)
            for path, why in skipped:
                self.reporter.note(f"{spec.label}: skipped checkpoint {path.name} ({why})")
        if resume_from:
            self.reporter.note(f"{spec.label}: resuming from {resume_from}")
        t0 = time.perf_counter()
        out = trainer.train(resume_from_checkpoint=resume_from)
        train_s = time.perf_counter() - t0
        final_dir = run_dir / "final"
        trainer.save_model(str(final_dir))
        if self.dist.is_main:
            write_checksums(final_dir)  # load_adapter then checks the files were not changed since
        # logged losses are averaged over the ranks by the trainer, but the steps after the last log enter
        # `training_loss` with this rank's share only; the logged part being the same on every rank, the mean over
        # ranks is the global loss
        train_loss = self._mean_over_ranks(out.training_loss)
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        sharded = bool(getattr(trainer, "is_fsdp_enabled", False))
        model = trainer.model
        model.eval()
        info = {
            "lr": lr,
            "rank": spec.rank,
            "alpha": spec.alpha if spec.alpha is not None else cfg.alpha,
            "trainable_params": trainable,
            "train_loss": train_loss,
            "final_logged_loss": losses[-1] if losses else None,
            "train_steps": trainer.state.global_step,
            "train_s": train_s,
            "resumed_from": str(resume_from) if resume_from else None,
            "adapter_dir": str(final_dir),
        }
        return model, info, sharded

    # -- the run ------------------------------------------------------------------------------------------------
    def _write(self, results: dict) -> None:
        if not self.dist.is_main:
            return
        atomic_write_json(self.out / "results.json", finite_or_null(results))
        atomic_write_text(self.out / "results.md", render_markdown(results))

    def run(self) -> dict:
        self._lock = None
        try:
            return self._run()
        finally:
            if self._lock is not None:
                self._lock.release()

    def _run(self) -> dict:
        cfg = self.config
        articles = self._articles()  # before loading the model: a bad data file fails fast
        base, tokenizer = self._load()
        data = self._data(tokenizer, *articles)
        needs_training = any(s.method != "none" for s in self.specs)
        if needs_training and not data["train"]:
            b = data["summary"]["train_build"]
            raise CurloraError(
                f"the training set is empty: {sum(b['skipped'].values())} question(s) skipped "
                f"({', '.join(f'{v} {k}' for k, v in b['skipped'].items()) or 'no questions'}); "
                "train on more articles, raise --max-length, or pass --keep-unanswerable"
            )
        if not data["eval"]:
            raise CurloraError(
                "no held-out question is left to evaluate on "
                f"({data['summary']['eval_build']}); hold out more articles or raise --max-length"
            )
        ppl_ids, ppl_name = self._ppl_ids(tokenizer)
        self._start_out()
        # every rank reads the same file here: rank 0 writes results.json only after the next wait
        previous = self._previous_records()
        main = self.dist.is_main
        environ = environment(self.device)
        if self.dist.enabled:
            environ["processes"] = self.dist.world_size
        results: dict[str, Any] = {
            "schema": SCHEMA,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": cfg.result_key(),
            "dtype": str(self.dtype).removeprefix("torch."),
            "data": data["summary"],
            "ppl": {"name": ppl_name, "max_length": cfg.ppl_max_length, "stride": cfg.ppl_stride},
            "methods": [],
            "environment": environ,
        }
        # the recipe's own evaluation runs on rank 0 while the other ranks wait (the base model is whole on every
        # rank); only a model that the trainer sharded (FSDP) is evaluated by every rank in step
        before = previous.get("__ppl_before__")
        if before is None and main:
            before = self._perplexity(base, ppl_ids, "perplexity (base model)")
        self._wait()
        if main:
            results["ppl"].update(tokens=before["tokens"], before=before["ppl"], before_detail=before)
        for spec in self.specs:
            done = previous.get(spec.label)
            if done is not None:
                self.reporter.note(f"{spec.label}: already finished in {self.out}, reusing its results")
                results["methods"].append(done)
                continue
            record: dict[str, Any] = {"label": spec.label, "method": spec.method}
            if spec.method == "none":
                model, record["trainable_params"], sharded = base, 0, False
                after = before
            else:
                model, info, sharded = self._train_method(spec, base, tokenizer, data["train"])
                record.update(info)
                after = None
            if main or sharded:
                scores = self._evaluate(model, tokenizer, data["eval"], f"answering ({spec.label})")
                predictions = scores.pop("predictions")
                if main:
                    atomic_write_json(self.out / f"predictions-{safe_name(spec.label)}.json", predictions)
                if after is None:
                    after = self._perplexity(model, ppl_ids, f"perplexity ({spec.label})")
            if main:
                record.update(scores)
                record["ppl_after"] = after["ppl"]
                record["ppl_change_pct"] = 100.0 * (after["ppl"] / before["ppl"] - 1.0)
                results["methods"].append(record)
                self.reporter.note(
                    f"{spec.label}: EM {record['exact_match']:.2f}  F1 {record['f1']:.2f}  "
                    f"ppl {before['ppl']:.3f} → {after['ppl']:.3f}"
                )
                self._write(results)
            if model is not base:
                del model
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
            self._wait()  # nobody starts the next method's training before rank 0 has evaluated this one
        self._write(results)
        return self._from_rank0(results)

    def _previous_records(self) -> dict[str, Any]:
        """With --resume: the finished methods of an earlier run of the same settings, and its base perplexity."""
        file = self.out / "results.json"
        if not self.resume or not file.is_file():
            return {}
        try:
            old = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return {}
        if old.get("schema") != SCHEMA:
            return {}
        out: dict[str, Any] = {r["label"]: r for r in old.get("methods", []) if "label" in r}
        detail = old.get("ppl", {}).get("before_detail")
        if detail:
            out["__ppl_before__"] = detail
        return out


def run_sft(config: SFTRecipeConfig, out_dir: str | Path, **kwargs) -> dict:
    """Run `curlora sft` from Python; keyword arguments go to `SFTRun` (model, tokenizer, ppl_text, resume, ...)."""
    return SFTRun(config, out_dir, **kwargs).run()
