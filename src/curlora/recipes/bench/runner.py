"""The continual-learning bench (paper §6.4, done right).

For every method and seed, from the same base weights, data order and head seeds:
  1. perplexity of the base model on general text (sliding window);
  2. for each task in order: a fresh seeded head on the last non-padding token, train adapter + head
     (AdamW, cosine schedule with warmup), then evaluate every task seen so far with its own head;
  3. perplexity again, through the untouched LM head.
After every (method, seed, task) the adapter + heads and results.json are written atomically, so a killed run
resumes where it stopped and ends with the numbers an uninterrupted run gives.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import get_cosine_schedule_with_warmup

from curlora import distributed
from curlora.data import Suite, load_suite, subsample_train
from curlora.data.tasks import Task, carve_validation, select_tasks
from curlora.errors import CurloraError
from curlora.files import atomic_dir, atomic_write_json, finite_or_null, safe_name
from curlora.methods import MethodSpec, check_rank_fits, parse_method, trainable_state, wrap_model
from curlora.metrics import delta_norm_ratio, delta_norm_ratios, kl_to_base
from curlora.models.load import load_model
from curlora.recipes.bench.classify import Encoded, backbone_of, batches, encode, hidden_size, new_head, pooled_hidden
from curlora.recipes.bench.config import BenchConfig
from curlora.recipes.bench.probe import fit_probe
from curlora.recipes.common import (
    Reporter,
    claim_run_folder,
    derive_seed,
    environment,
    perplexity_stage,
    recorded_diff,
    resolve_device,
    settings_diff,
)
from curlora.reports.results import RESULTS_FILE, SCHEMA_VERSION
from curlora.tuner.config import default_target_modules
from curlora.tuner.saved import ADAPTER_WEIGHTS, adapter_bytes, save_adapter

log = logging.getLogger(__name__)


class Bench:
    def __init__(
        self,
        config: BenchConfig,
        out_dir: str | Path,
        *,
        model=None,
        tokenizer=None,
        suite: Suite | None = None,
        reporter: Reporter | None = None,
        overwrite: bool = False,
    ):
        self.config = config
        self.out = Path(out_dir)
        self.reporter = reporter or Reporter()
        self.specs = [parse_method(m) for m in config.methods]
        self.device, self.dtype = resolve_device(config.device, config.dtype)
        # under accelerate launch / torchrun: join the process group, use cuda:LOCAL_RANK (docs/DISTRIBUTED.md)
        self.dist, self.device = distributed.setup(self.device)
        self._fsdp_groups: dict[nn.Module, list[nn.Module]] = {}  # FSDP: sharded model -> its sharded modules
        if not self.dist.is_main:
            self.reporter = Reporter()  # progress and stage summaries come from rank 0 alone
        self._check_out_dir(overwrite)
        self.suite = _prepared(
            suite if suite is not None else load_suite(config.suite, config.data_dir, order=config.task_order),
            config,
        )
        if config.kl_max_tokens and self.dist.fsdp:
            raise CurloraError("--kl-max-tokens needs the base model on the GPU, which FSDP does not keep; drop it")
        home = torch.device("cpu") if self.dist.fsdp else self.device
        if config.quantize and self.dist.fsdp:
            raise CurloraError("--quantize with FSDP is not supported; run one process per GPU without FSDP")
        if model is None:
            # a quantized base is placed and cast by from_pretrained (bitsandbytes models refuse .to(dtype))
            kw = dict(quantize=config.quantize, dtype=self.dtype, device=home) if config.quantize else {}
            model, tokenizer = load_model(config.model, **kw)
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        # frozen copy of the base: every method and seed starts from exactly these weights (with FSDP it waits in
        # host memory, and each working copy is sharded as soon as it is on the GPU)
        if not getattr(model, "is_quantized", False):
            model = model.to(home, dtype=self.dtype)
        self.base = model.eval().requires_grad_(False)
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        self.targets = list(config.target_modules or default_target_modules(model_type))
        for spec in self.specs:
            check_rank_fits(self.base, spec, self.targets)
        for task in self.suite.tasks:  # N larger than the data fails now, not after the first method has run
            subsample_train(task, config.n_train, config.seeds[0])
        self._claim_out_dir(overwrite)
        self.hidden = hidden_size(self.base)
        self.autocast = (
            torch.autocast(self.device.type, dtype=self.dtype) if self.dtype != torch.float32 else nullcontext()
        )

    # -- run directory ----------------------------------------------------------------------------------------
    def _check_out_dir(self, overwrite: bool) -> None:
        diff = None if overwrite else settings_diff(self.out, self.config.result_key())
        if diff:
            raise CurloraError(
                f"{self.out} holds a run with other settings (differs in: {', '.join(diff)}); "
                "pass --out NEW_FOLDER, or --overwrite to start over"
            )
        if not overwrite:  # finished runs and stages must match too (config.json may be gone): before any write
            for spec in self.specs:
                for seed in self.config.seeds:
                    run_dir = self.out / "runs" / safe_name(spec.label) / f"seed-{seed}"
                    for file in [run_dir / "run.json", *sorted(run_dir.glob("stage-*/stage.json"))]:
                        if file.is_file():
                            self._reuse(file, spec, seed)

    def _claim_out_dir(self, overwrite: bool) -> None:
        """Called once every input is validated, so that a bad input leaves no folder behind."""
        self._lock = None
        if self.dist.is_main:
            self._lock = claim_run_folder(
                self.out,
                self.config.result_key() | {"device": self.config.device},
                overwrite=overwrite,
                reporter=self.reporter,
                ignore=("device",),
            )
        distributed.barrier(self.dist)

    def _settings(self, spec: MethodSpec, seed: int) -> dict:
        """What produced one (method, seed) run: recorded in its run.json and stage.json files and compared before
        they are reused, so a folder whose config.json was deleted or edited cannot hand back another run's numbers."""
        key = {k: v for k, v in self.config.result_key().items() if k not in ("methods", "seeds")}
        return json.loads(json.dumps(key | {"label": spec.label, "seed": seed}))

    def _reuse(self, file: Path, spec: MethodSpec, seed: int) -> dict:
        saved = json.loads(file.read_text(encoding="utf-8"))
        diff = recorded_diff(saved.pop("settings", None), self._settings(spec, seed))
        if diff:
            raise CurloraError(
                f"{file} was produced by other settings (differs in: {', '.join(diff)}); "
                "pass another --out, or --overwrite to start over"
            )
        return saved

    def _stage_dir(self, spec: MethodSpec, seed: int, i: int) -> Path:
        return self.out / "runs" / safe_name(spec.label) / f"seed-{seed}" / f"stage-{i}-{self.suite.tasks[i].name}"

    # -- data -------------------------------------------------------------------------------------------------
    def _eval_examples(self, task: Task) -> list:
        evals = task.eval
        if self.config.n_eval is not None and self.config.n_eval < len(evals):
            # a fixed subset (independent of the run seed): every run is scored on the same examples
            keep = torch.randperm(len(evals), generator=torch.Generator().manual_seed(20240715))
            evals = [evals[k] for k in sorted(keep[: self.config.n_eval].tolist())]
        return evals

    def _encoded(self, seed: int) -> list[tuple[Encoded, Encoded, Encoded | None]]:
        """(train, eval, validation or None) per task, in suite order."""
        out = []
        for task in self.suite.tasks:
            train = subsample_train(task, self.config.n_train, seed).train
            enc = [
                encode(
                    self.tokenizer,
                    [e.text for e in split],
                    [e.text_pair for e in split],
                    [e.label for e in split],
                    self.config.max_length,
                )
                for split in (train, self._eval_examples(task), *([task.val] if task.val else []))
            ]
            out.append((enc[0], enc[1], enc[2] if task.val else None))
        return out

    # -- one stage --------------------------------------------------------------------------------------------
    def _train(
        self,
        model: nn.Module,
        head: nn.Linear,
        data: Encoded,
        seed: int,
        i: int,
        lr: float,
        features: torch.Tensor | None,
        head_lr: float | None = None,
    ) -> dict:
        cfg = self.config
        trained = [p for p in model.parameters() if p.requires_grad]
        params = trained + list(head.parameters())
        # FSDP2 makes sharded params DTensors while the head stays a plain tensor: foreach cannot mix the two
        foreach = False if any(hasattr(p, "placements") for p in params) else None
        # the head may learn at its own rate; both groups follow the same warm-up and cosine schedule
        groups = ([{"params": trained, "lr": lr}] if trained else []) + [
            {"params": list(head.parameters()), "lr": head_lr if head_lr is not None else lr}
        ]
        opt = torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.weight_decay, foreach=foreach)
        steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
        total = steps_per_epoch * cfg.epochs
        warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round((cfg.warmup_ratio or 0) * total)
        sched = get_cosine_schedule_with_warmup(opt, warmup, total)
        torch.manual_seed(derive_seed(seed, i, "dropout"))
        backbone = backbone_of(model)
        # several processes: each takes its slice of every global batch; the gradients of what FSDP does not
        # shard (everything without FSDP; the head with it) are averaged by one all-reduce after backward
        multi = self.dist.enabled
        synced = [p for p in params if not distributed.is_sharded(p)] if multi else []
        model.train()
        losses, peak_lr, t0 = [], 0.0, time.perf_counter()
        self.reporter.bar(f"train {self.suite.tasks[i].name}", total)
        for epoch in range(cfg.epochs):
            gen = torch.Generator().manual_seed(derive_seed(seed, i, epoch, "shuffle"))
            for ids, mask, labels, idx in batches(data, cfg.batch_size, self.pad_id, generator=gen):
                peak_lr = max(peak_lr, sched.get_last_lr()[0])
                if multi:
                    ids, mask, labels, idx, scale = distributed.local_rows(ids, mask, labels, idx, self.dist)
                with self.autocast:
                    if features is not None:
                        pooled = features[idx.to(features.device)]
                    else:
                        pooled = pooled_hidden(backbone, ids.to(self.device), mask.to(self.device))
                    logits = head(pooled.float())
                if multi:  # averaged over ranks: (sum of the global batch's losses) / (global batch size)
                    loss = F.cross_entropy(logits.float(), labels.to(self.device), reduction="sum") * scale
                else:
                    loss = F.cross_entropy(logits.float(), labels.to(self.device))
                loss.backward()
                if synced:
                    distributed.average_grads_(synced, self.dist)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                losses.append(loss.detach())  # no .item(): a sync per step would stall the GPU queue
                self.reporter.advance()
        self.reporter.end_bar()
        model.eval()
        if multi:  # the global batch's loss per step: the mean of the ranks' scaled losses
            losses = list(distributed.sum_over_ranks_(torch.stack(losses), self.dist).div_(self.dist.world_size))
        tail = losses[-max(1, len(losses) // 10) :]
        return {
            "train_loss": float(torch.stack(tail).mean()),
            "steps": total,
            "peak_lr": peak_lr,
            "train_s": time.perf_counter() - t0,
        }

    @torch.inference_mode()
    def _features(self, model: nn.Module, data: Encoded, what: str) -> torch.Tensor:
        """Pooled hidden states of every example, in data order (eval mode). Several processes: rank r embeds
        batches r, r + world, ... (the batches of one process), and a sum over ranks assembles the rows."""
        backbone = backbone_of(model)
        rank, world = self.dist.rank, self.dist.world_size
        n_batches = math.ceil(len(data) / self.config.eval_batch_size)
        mine = range(rank, n_batches, world)
        out = (torch.zeros if world > 1 else torch.empty)(len(data), self.hidden, device=self.device)
        self.reporter.bar(what, len(mine))
        first = None
        for k, (ids, mask, _, idx) in enumerate(
            batches(data, self.config.eval_batch_size, self.pad_id, sort_by_length=True)
        ):
            if first is None:
                first = (ids[:1], mask[:1])
            if k % world != rank:
                continue
            with self.autocast:
                out[idx.to(self.device)] = pooled_hidden(backbone, ids.to(self.device), mask.to(self.device)).float()
            self.reporter.advance()
        if self.dist.fsdp and len(mine) < math.ceil(n_batches / world):
            with self.autocast:  # FSDP: every rank runs as many forwards (their all-gathers pair up)
                pooled_hidden(backbone, first[0].to(self.device), first[1].to(self.device))
        self.reporter.end_bar()
        return distributed.sum_over_ranks_(out, self.dist)  # each row was filled on exactly one rank

    @torch.inference_mode()
    def _predict(self, head: nn.Linear, feats: torch.Tensor, data: Encoded) -> tuple[float, str]:
        """Accuracy and the predicted labels, one digit per example in data order (stored for a bootstrap over
        examples; every task has at most ten classes)."""
        pred = head(feats).argmax(-1).cpu()
        acc = int((pred == torch.tensor(data.labels)).sum()) / len(data.labels)  # exact: the same as from `pred`
        return acc, "".join(str(int(k)) for k in pred.tolist())

    def _evaluate(self, model, spec: MethodSpec, heads, encoded, i: int, cache: dict) -> dict:
        """Every task seen so far, each with its own head: test accuracy and predictions, and validation accuracy
        when the tasks carry a validation split. A frozen backbone's features are embedded once and cached."""
        acc, pred, val = [], [], []
        for j in range(i + 1):
            for split, data in (("eval", encoded[j][1]), ("val", encoded[j][2])):
                if data is None:
                    continue
                feats = cache.get((j, split))
                if feats is None:
                    feats = self._features(model, data, f"{split} {self.suite.tasks[j].name}")
                    if spec.frozen_backbone:
                        cache[(j, split)] = feats
                a, p = self._predict(heads[j], feats, data)
                if split == "eval":
                    acc.append(a)
                    pred.append(p)
                else:
                    val.append(a)
        return {"acc": acc, "pred": pred, **({"val_acc": val} if val else {})}

    def _fit_probe(self, head: nn.Linear, feats: torch.Tensor, data: Encoded, seed: int, i: int) -> dict:
        """The probe's stage: a converged L2 logistic regression on frozen features replaces gradient training."""
        t0 = time.perf_counter()
        labels = torch.tensor(data.labels)
        fitted, info = fit_probe(feats, labels, head.out_features, seed=derive_seed(seed, i, "probe") % (2**31))
        with torch.no_grad():
            head.weight.copy_(fitted.weight)
            head.bias.copy_(fitted.bias)
        return {"train_loss": None, "steps": 0, "peak_lr": 0.0, "train_s": time.perf_counter() - t0, "probe": info}

    @functools.cached_property
    def _ppl_ids(self) -> torch.Tensor:
        """The perplexity text's token ids, tokenized once for the base model and every run."""
        text = self.suite.ppl_text
        ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False, verbose=False)["input_ids"]
        return ids[:, : self.config.ppl_max_tokens] if self.config.ppl_max_tokens else ids

    def _perplexity(self, model: nn.Module, what: str) -> dict:
        cfg = self.config
        with self.autocast:
            return perplexity_stage(
                model,
                self._ppl_ids,
                max_length=cfg.ppl_max_length,
                stride=cfg.ppl_stride,
                device=self.device,
                reporter=self.reporter,
                what=what,
            )

    # -- one (method, seed) -----------------------------------------------------------------------------------
    def _run_one(self, spec: MethodSpec, seed: int, encoded, base_ppl: dict, results: dict) -> dict:
        cfg = self.config
        lr = spec.lr if spec.lr is not None else cfg.lr
        head_lr = spec.head_lr if spec.head_lr is not None else cfg.head_lr
        record = {
            "label": spec.label,
            "method": spec.method,
            "rank": spec.rank,
            "sampling": (spec.sampling or cfg.sampling) if spec.takes_sampling else None,
            "lr": lr,
            "head_lr": head_lr if head_lr is not None else lr,
            "seed": seed,
            "acc": [],
            "pred": [],
            "stages": [],
            "ppl_before": base_ppl["ppl"],
            "ppl_after": None,
            "complete": False,
        }
        done_file = self.out / "runs" / safe_name(spec.label) / f"seed-{seed}" / "run.json"
        if done_file.exists():
            return self._reuse(done_file, spec, seed)
        t_start = time.perf_counter()
        model = self._fresh_copy()
        if spec.method == "full" and self.dist.fsdp:  # the untouched base in host memory: no second GPU copy
            originals = dict(self.base.named_parameters())
        else:
            originals = {n: p.detach().clone() for n, p in model.named_parameters()} if spec.method == "full" else None
        # every random draw of this run (PEFT LoRA's A comes from the global RNG) follows from (seed, method), never
        # from what ran before it in this process: a resumed or solo run gives the numbers of an uninterrupted one
        torch.manual_seed(derive_seed(seed, spec.label, "init") % (2**63))
        model = wrap_model(
            model,
            spec,
            target_modules=self.targets,
            alpha=cfg.alpha,
            sampling=cfg.sampling,
            seed=derive_seed(seed, "cur") % (2**31),
        )
        record["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if self.dist.enabled:  # start from rank 0's trainable values (LoRA's A is random); check the rest agrees
            distributed.broadcast_([p for p in model.parameters() if p.requires_grad], self.dist)
            distributed.check_replicated(model, self.dist, f"{spec.label} model")
        heads: list[nn.Linear] = []
        frozen_feats: dict[tuple[int, str], torch.Tensor] = {}
        prior_wall = 0.0
        for i, task in enumerate(self.suite.tasks):
            stage_dir = self._stage_dir(spec, seed, i)
            head = new_head(self.hidden, len(task.label_names), derive_seed(seed, i, "head") % (2**31))
            head.to(self.device)
            if (stage_dir / "stage.json").exists():  # finished earlier: restore its state, skip the work
                self._load_stage(model, spec, heads + [head], stage_dir)
                heads.append(head.requires_grad_(False))
                stage = self._reuse(stage_dir / "stage.json", spec, seed)
                self._take_rows(record, stage)
                record["stages"].append(stage)
                prior_wall = stage.get("wall_s_total", prior_wall)
                continue
            self._shard(model)  # FSDP: after loading finished stages (resume), before the first training step
            train_data = encoded[i][0]
            feats = None
            if spec.frozen_backbone:  # the backbone never changes: embed once, train the head on features
                feats = self._features(model, train_data, f"embed {task.name}")
            if spec.method == "probe":
                stage = {"task": task.name, **self._fit_probe(head, feats, train_data, seed, i)}
            elif spec.head_init == "probe":  # linear probe, then fine-tune: the head starts converged
                init = self._fit_probe(head, self._features(model, train_data, f"probe {task.name}"), train_data,
                                       seed, i)
                stage = {"task": task.name, **self._train(model, head, train_data, seed, i, lr, None, head_lr),
                         "head_init": init["probe"]}
            else:
                stage = {"task": task.name, **self._train(model, head, train_data, seed, i, lr, feats, head_lr)}
            heads.append(head.requires_grad_(False))
            t_eval = time.perf_counter()
            rows = self._evaluate(model, spec, heads, encoded, i, frozen_feats)
            row = rows["acc"]
            stage["eval_s"] = time.perf_counter() - t_eval
            stage["wall_s_total"] = prior_wall + time.perf_counter() - t_start
            recorded = {**stage, **rows, "settings": self._settings(spec, seed)}
            self._save_stage(model, spec, heads, stage_dir, finite_or_null(recorded))
            self._take_rows(record, {**stage, **rows})
            record["stages"].append(stage)
            self._write_results(results, record)
            distributed.barrier(self.dist)  # rank 0 has written the stage: every rank sees the same files
            self.reporter.stage(
                {
                    "label": spec.label,
                    "seed": seed,
                    "task": task.name,
                    "acc": row,
                    "tasks": [t.name for t in self.suite.tasks[: i + 1]],
                    **stage,
                }
            )
        self._shard(model)
        ppl_after = self._perplexity(model, f"perplexity after ({spec.label})")
        kl = self._kl(model, spec) if cfg.kl_max_tokens else None
        if model in self._fsdp_groups:
            ratios = _sharded_delta_norm_ratios(model, originals, self._fsdp_groups.pop(model))
        else:
            ratios = delta_norm_ratios(model, adapter_name=None, originals=originals)
        last_dir = self._stage_dir(spec, seed, len(self.suite.tasks) - 1)
        # NaN weights (a diverged run) give NaN metrics, which JSON cannot hold: record null and say so
        diverged = not math.isfinite(ppl_after["ppl"]) or not all(math.isfinite(x) for x in ratios)
        record.update(
            {
                "ppl_after": None if diverged else ppl_after["ppl"],
                "diverged": diverged,
                "kl": None if diverged else kl,
                "delta_norm_ratio": {"mean": sum(ratios) / len(ratios), "max": max(ratios)}
                if ratios and not diverged
                else None,
                "head_params": sum(h.weight.numel() + h.bias.numel() for h in heads),
                "adapter_bytes": adapter_bytes(last_dir / "adapter")
                if not spec.frozen_backbone
                else None,
                "wall_s": prior_wall + time.perf_counter() - t_start,
                "peak_lr": max(s["peak_lr"] for s in record["stages"]),
                **({"probe": [s.get("probe") for s in record["stages"]]} if spec.method == "probe" else {}),
                "complete": True,
            }
        )
        if self.dist.is_main:
            atomic_write_json(done_file, finite_or_null(record) | {"settings": self._settings(spec, seed)})
        distributed.barrier(self.dist)
        return record

    @staticmethod
    def _take_rows(record: dict, stage: dict) -> None:
        """Move one stage's accuracy rows (and predictions) from its stage record into the run record."""
        record["acc"].append(stage.pop("acc"))
        record["pred"].append(stage.pop("pred", None))
        if "val_acc" in stage:
            record.setdefault("val_acc", []).append(stage.pop("val_acc"))

    def _kl(self, model: nn.Module, spec: MethodSpec) -> dict:
        """How far the trained LM's next-token distribution moved from the base's on the perplexity text."""
        cfg = self.config
        self.reporter.bar(f"KL to the base ({spec.label})", 1)
        try:
            with self.autocast:
                return kl_to_base(
                    model,
                    self.base,
                    self._ppl_ids,
                    max_length=cfg.ppl_max_length,
                    stride=cfg.ppl_stride,
                    device=self.device,
                    batch_size=8 if self.device.type == "cuda" else 1,
                    max_tokens=cfg.kl_max_tokens,
                )
        finally:
            self.reporter.advance()
            self.reporter.end_bar()

    # -- several processes ------------------------------------------------------------------------------------
    def _fresh_copy(self) -> nn.Module:
        """A working copy of the base on this process's device (with FSDP the base itself stays on the CPU)."""
        model = copy.deepcopy(self.base)
        return model.to(self.device) if self.dist.fsdp else model

    def _shard(self, model: nn.Module) -> nn.Module:
        """FSDP: shard the model's transformer body once (a no-op without FSDP or when done already)."""
        if self.dist.fsdp and model not in self._fsdp_groups:
            body = backbone_of(model)
            inner = model.get_base_model() if hasattr(model, "get_base_model") else model
            self._fsdp_groups[model] = distributed.fully_shard_body(body, inner, self.device, self.dist)
        return model

    def _full_trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """FSDP: the state dict with whole trainable tensors (gathered: a collective) and plain buffers; frozen
        sharded weights left out. What save_pretrained and the `full` method's file need."""
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        state = {}
        for name, value in model.state_dict().items():
            if name in trainable:
                state[name] = distributed.full_tensor(value.detach()).cpu().contiguous()
            elif not distributed.is_sharded(value):
                state[name] = value
        return state

    def _save_stage(self, model, spec: MethodSpec, heads, stage_dir: Path, stage: dict) -> None:
        gathered = self._full_trainable_state(model) if model in self._fsdp_groups else None
        if not self.dist.is_main:
            return
        with atomic_dir(stage_dir) as tmp:
            if spec.has_adapter:
                save_adapter(model, tmp / "adapter", **({"state_dict": gathered} if gathered else {}))
            elif spec.method == "full":
                (tmp / "adapter").mkdir()
                if gathered is not None:
                    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
                    state = {n: v for n, v in gathered.items() if n in trainable}
                else:
                    state = trainable_state(model)
                save_file(state, str(tmp / "adapter" / ADAPTER_WEIGHTS))
            save_file(
                {
                    f"head_{j}.{k}": v.detach().cpu().contiguous()
                    for j, h in enumerate(heads)
                    for k, v in h.state_dict().items()
                },
                str(tmp / "heads.safetensors"),
            )
            atomic_write_json(tmp / "stage.json", stage)

    def _load_stage(self, model, spec: MethodSpec, heads, stage_dir: Path) -> None:
        saved = load_file(str(stage_dir / "heads.safetensors"), device=str(self.device))
        for j, h in enumerate(heads):
            h.load_state_dict({"weight": saved[f"head_{j}.weight"], "bias": saved[f"head_{j}.bias"]})
        weights = stage_dir / "adapter" / ADAPTER_WEIGHTS
        if spec.has_adapter:
            set_peft_model_state_dict(model, load_file(str(weights), device=str(self.device)))
        elif spec.method == "full":
            state = load_file(str(weights), device=str(self.device))
            with torch.no_grad():
                params = dict(model.named_parameters())
                for name, value in state.items():
                    params[name].copy_(value)

    # -- whole bench ------------------------------------------------------------------------------------------
    def _task_info(self, task: Task) -> dict:
        """What a reader needs to judge a task's accuracies: sizes, label priors, the eval labels in order."""
        evals = self._eval_examples(task)
        n_train = len(task.train) if self.config.n_train is None else min(self.config.n_train, len(task.train))

        def counts(examples) -> dict[str, int]:
            return {name: sum(ex.label == k for ex in examples) for k, name in enumerate(task.label_names)}

        return {
            "name": task.name,
            "kind": task.kind,
            "labels": list(task.label_names),
            "n_train": n_train,
            "n_train_pool": len(task.train),
            "n_val": len(task.val),
            "n_eval": len(evals),
            "train_counts": counts(task.train),
            "val_counts": counts(task.val),
            "eval_counts": counts(evals),
            "eval_labels": "".join(str(ex.label) for ex in evals),
        }

    def _write_results(self, results: dict, partial: dict | None = None) -> None:
        if not self.dist.is_main:
            return
        runs = list(results["runs"])
        if partial is not None:
            runs = [r for r in runs if not (r["label"] == partial["label"] and r["seed"] == partial["seed"])]
            runs.append(partial)
        atomic_write_json(self.out / RESULTS_FILE, finite_or_null({**results, "runs": runs}))

    def run(self) -> dict:
        try:
            return self._run()
        finally:
            if self._lock is not None:
                self._lock.release()

    def _run(self) -> dict:
        base_file = self.out / "base_ppl.json"
        if base_file.exists():
            base_ppl = json.loads(base_file.read_text())
        else:
            base = self._shard(self._fresh_copy()) if self.dist.fsdp else self.base
            base_ppl = self._perplexity(base, "perplexity of the base model")
            self._fsdp_groups.pop(base, None)
            del base
            if self.dist.is_main:
                atomic_write_json(base_file, finite_or_null(base_ppl))
            distributed.barrier(self.dist)
        results = {
            "schema_version": SCHEMA_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": self.config.result_key()
            | {
                "device": str(self.device),
                "dtype": str(self.dtype).removeprefix("torch."),
                "target_modules": self.targets,
            },
            "environment": environment(self.device)
            | ({"processes": self.dist.world_size, "fsdp": self.dist.fsdp} if self.dist.enabled else {}),
            "suite": {
                "name": self.suite.name,
                "tasks": [t.name for t in self.suite.tasks],
                "task_info": [self._task_info(t) for t in self.suite.tasks],
                "ppl_name": self.suite.ppl_name,
                "notes": list(self.suite.notes),
                "ppl_tokens": base_ppl.get("tokens"),
                "ppl_max_length": base_ppl.get("max_length"),
                "ppl_stride": base_ppl.get("stride"),
            },
            "runs": [],
        }
        for seed in self.config.seeds:
            encoded = self._encoded(seed)
            for spec in self.specs:
                record = self._run_one(spec, seed, encoded, base_ppl, results)
                results["runs"] = [
                    r for r in results["runs"] if not (r["label"] == record["label"] and r["seed"] == record["seed"])
                ] + [record]
                self._write_results(results)
        # runs in a stable order: methods as listed, then seeds
        order = {s.label: k for k, s in enumerate(self.specs)}
        results["runs"].sort(key=lambda r: (order.get(r["label"], 99), r["seed"]))
        self._write_results(results)
        return results


def _prepared(suite: Suite, config: BenchConfig) -> Suite:
    """The suite as this bench runs it: the tasks of --task-order in that order (a suite handed in directly is
    reordered here too) and --n-val validation rows carved from each task's training rows."""
    if config.task_order and [t.name for t in suite.tasks] != list(config.task_order):
        suite = select_tasks(suite, config.task_order)
    if config.n_val:
        suite = Suite(suite.name, [carve_validation(t, config.n_val) for t in suite.tasks], suite.ppl_name,
                      suite.ppl_text, list(suite.notes))
    return suite


@torch.inference_mode()  # like the perplexity before it: FSDP's gather buffers may be inference tensors
def _sharded_delta_norm_ratios(
    model: nn.Module, originals: dict[str, torch.Tensor] | None, groups: list[nn.Module]
) -> list[float]:
    """`metrics.delta_norm_ratios` of an FSDP-sharded model: each sharded module's own parameters made whole in turn
    (layers first, then the root), so that at most one layer is gathered at a time. A collective."""
    names = {id(m): n for n, m in model.named_modules()}
    ratios: list[float] = []
    done: set = set()
    for group in groups:
        with distributed.unsharded(group):
            if originals is not None:
                prefix = names[id(group)]
                for name, p in group.named_parameters(prefix=prefix):
                    if p.requires_grad and name not in done and not distributed.is_sharded(p):
                        done.add(name)
                        w0 = originals[name].to(p.device).float()
                        ratios.append(delta_norm_ratio(p.float() - w0, w0))
                continue
            for module in group.modules():
                if not isinstance(module, BaseTunerLayer) or id(module) in done:
                    continue
                if distributed.is_sharded(module.get_base_layer().weight):
                    continue  # inside a sharded child: handled with that child's group
                done.add(id(module))
                ratios.extend(delta_norm_ratios(module, adapter_name=None))
    return ratios
