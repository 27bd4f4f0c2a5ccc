"""Extractive question answering with a causal LM: prompts, context truncation, SQuAD scoring, greedy evaluation.

Prompt and completion
---------------------
The prompt is ``template.format(context=..., question=...)``, by default::

    Context: <paragraph>
    Question: <question>
    Answer:

and the completion the model learns is ``" " + answer + eos``. Loss is taken on the completion only (TRL's
prompt/completion format). An unanswerable question (SQuAD 2.0), when it is kept at all, is trained with the
answer `NO_ANSWER` ("unanswerable"); generating that marker counts as predicting "no answer" (the empty string).

Truncation
----------
When prompt + completion would exceed ``max_length`` tokens, the CONTEXT is cut (at a word boundary, keeping its
beginning); the question, the template and the answer are never cut. If the answer span then no longer lies in
the kept context, the example is skipped (it would teach the model to answer from nothing), and counted by
reason: see `build_examples`. Evaluation prompts get the same treatment with `max_new_tokens` reserved for the
answer, and a held-out question is skipped when none of its gold answers survives.

Scoring
-------
`normalize_answer`, `exact_match` and `f1_score` follow the official SQuAD evaluation: lowercase, remove
punctuation, remove the articles a/an/the, collapse whitespace; EM and F1 are maxima over the gold answers, an
unanswerable question has the single gold answer "" (so only an empty prediction scores), and `squad_scores`
reports both in percent.
"""

from __future__ import annotations

import collections
import logging
import re
import string
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from curlora.data.squad import SquadQuestion
from curlora.errors import CurloraError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TEMPLATE",
    "NO_ANSWER",
    "QAExample",
    "PromptBuilder",
    "build_examples",
    "evaluate_qa",
    "exact_match",
    "f1_score",
    "generate_answers",
    "normalize_answer",
    "squad_scores",
]

DEFAULT_TEMPLATE = "Context: {context}\nQuestion: {question}\nAnswer:"
NO_ANSWER = "unanswerable"

# ----------------------------------------------------------------------------------------------------------------
# SQuAD scoring
# ----------------------------------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Official SQuAD normalisation: lowercase, drop ASCII punctuation, drop a/an/the, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _golds(gold_answers: Sequence[str]) -> list[str]:
    """Gold answers that are not empty after normalisation; [""] when none is (an unanswerable question)."""
    kept = [g for g in gold_answers if normalize_answer(g)]
    return kept or [""]


def _em_one(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def _f1_one(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        # "no answer" against "no answer" is a match; anything against nothing is not
        return float(pred_tokens == gold_tokens)
    overlap = sum((collections.Counter(pred_tokens) & collections.Counter(gold_tokens)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, gold_answers: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals a normalised gold answer, else 0.0. An empty gold list (or golds
    that normalise to nothing) means "unanswerable": only an empty prediction matches."""
    return max(_em_one(prediction, g) for g in _golds(gold_answers))


def f1_score(prediction: str, gold_answers: Sequence[str]) -> float:
    """Bag-of-tokens F1 between the normalised prediction and each gold answer; the maximum over gold answers."""
    return max(_f1_one(prediction, g) for g in _golds(gold_answers))


def squad_scores(predictions: Sequence[str], gold_answers: Sequence[Sequence[str]]) -> dict[str, float | int]:
    """``{"exact_match", "f1", "n"}``: EM and F1 averaged over questions, in percent (0-100) like the official
    script; also ``has_answer_*``/``no_answer_*`` splits when both kinds of questions are present."""
    if len(predictions) != len(gold_answers):
        raise CurloraError(f"{len(predictions)} predictions for {len(gold_answers)} questions; pass one per question")
    if not predictions:
        raise CurloraError("nothing to score: no questions")
    em = [exact_match(p, g) for p, g in zip(predictions, gold_answers, strict=True)]
    f1 = [f1_score(p, g) for p, g in zip(predictions, gold_answers, strict=True)]
    out: dict[str, float | int] = {
        "exact_match": 100.0 * sum(em) / len(em),
        "f1": 100.0 * sum(f1) / len(f1),
        "n": len(em),
    }
    has = [_golds(g) != [""] for g in gold_answers]
    if any(has) and not all(has):
        for name, want in (("has_answer", True), ("no_answer", False)):
            idx = [i for i, h in enumerate(has) if h == want]
            out[f"{name}_exact_match"] = 100.0 * sum(em[i] for i in idx) / len(idx)
            out[f"{name}_f1"] = 100.0 * sum(f1[i] for i in idx) / len(idx)
            out[f"{name}_n"] = len(idx)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Prompts and truncation
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QAExample:
    """A question ready to train on or to ask: `prompt` holds the (possibly truncated) context.

    `completion` is ``" " + target + eos`` (empty for evaluation-only examples); `answers` are the gold answers
    for scoring ([] for an unanswerable question).
    """

    id: str
    prompt: str
    completion: str
    answers: tuple[str, ...]
    target: str
    truncated: bool


@dataclass
class BuildStats:
    """What `build_examples` did: examples kept, contexts cut, and skips by reason."""

    kept: int = 0
    truncated: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {"kept": self.kept, "truncated": self.truncated, "skipped": dict(self.skipped)}


def _check_template(template: str) -> None:
    try:
        template.format(context="c", question="q")
    except (KeyError, IndexError, ValueError) as exc:
        raise CurloraError(
            f"prompt template {template!r} is not usable ({exc!r}); it may only use the fields {{context}} and "
            "{question} (write {{ and }} for literal braces)"
        ) from None
    for name in ("{context}", "{question}"):
        if name not in template:
            raise CurloraError(f"prompt template {template!r} must contain {name}")


def _word_ends(context: str) -> list[int]:
    """Positions where the context may be cut: ends of words, and the end of the text."""
    ends = [m.end() for m in re.finditer(r"\S+", context)]
    if len(ends) < 2:  # scripts without spaces: any character boundary
        ends = list(range(1, len(context) + 1))
    return ends


class PromptBuilder:
    """Formats prompts and cuts contexts so that prompt + completion fit in `max_length` tokens.

    Token counts are those of ``tokenizer(prompt + completion)`` with the tokenizer's default special tokens, which
    is how TRL's SFTTrainer tokenizes prompt/completion pairs, so a built example is never cut again by TRL.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        template: str = DEFAULT_TEMPLATE,
        max_length: int = 512,
        no_answer: str = NO_ANSWER,
    ) -> None:
        _check_template(template)
        if max_length < 8:
            raise CurloraError(f"max_length must be >= 8 tokens, got {max_length}")
        if tokenizer.eos_token is None:
            raise CurloraError("the tokenizer has no eos token; the answer needs one to end")
        self.tokenizer = tokenizer
        self.template = template
        self.max_length = max_length
        self.no_answer = no_answer

    def n_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, verbose=False)["input_ids"])

    def prompt(self, context: str, question: str) -> str:
        return self.template.format(context=context, question=question)

    def completion(self, answer: str) -> str:
        return " " + answer.strip() + self.tokenizer.eos_token

    def fit_context(self, context: str, question: str, suffix: str = "", reserve: int = 0) -> int | None:
        """How many characters of `context` to keep so that prompt + `suffix` + `reserve` tokens fit in
        max_length: ``len(context)`` when it all fits, a word end when it must be cut, None when even an empty
        context does not fit (the question is too long)."""
        budget = self.max_length - reserve

        def fits(cut: int) -> bool:
            return self.n_tokens(self.prompt(context[:cut].rstrip(), question) + suffix) <= budget

        if fits(len(context)):
            return len(context)
        ends = _word_ends(context)
        lo, hi = -1, len(ends) - 1  # invariant: ends[hi] does not fit; ends[lo] fits (lo == -1: nothing tried)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if fits(ends[mid]):
                lo = mid
            else:
                hi = mid
        if lo >= 0:
            return ends[lo]
        return 0 if fits(0) else None

    @staticmethod
    def _span_kept(q: SquadQuestion, i: int, cut: int) -> bool:
        text, start = q.answers[i], q.answer_starts[i]
        if start < 0:
            return text in q.context[:cut]
        return start + len(text) <= cut

    def train_example(self, q: SquadQuestion, *, keep_unanswerable: bool = False) -> tuple[QAExample | None, str]:
        """(example, "") or (None, reason). Trains on the first gold answer whose span survives truncation."""
        if q.is_impossible and not keep_unanswerable:
            return None, "unanswerable"
        candidates = [self.no_answer] if q.is_impossible else [a for a in q.answers if a.strip()]
        if not candidates:
            return None, "empty answer"
        # the longest candidate decides the space left for the context, so any choice below fits
        longest = max((self.completion(a) for a in candidates), key=self.n_tokens)
        cut = self.fit_context(q.context, q.question, suffix=longest)
        if cut is None:
            return None, "question too long"
        if q.is_impossible:
            target = self.no_answer
        else:
            kept = [i for i, a in enumerate(q.answers) if a.strip() and self._span_kept(q, i, cut)]
            if not kept:
                return None, "answer cut from context"
            target = q.answers[kept[0]].strip()
        ex = QAExample(
            id=q.id,
            prompt=self.prompt(q.context[:cut].rstrip(), q.question),
            completion=self.completion(target),
            answers=q.answers,
            target=target,
            truncated=cut < len(q.context),
        )
        return ex, ""

    def eval_example(self, q: SquadQuestion, *, reserve: int = 32) -> tuple[QAExample | None, str]:
        """A prompt that leaves `reserve` tokens for the generated answer; skipped when no gold answer survives."""
        cut = self.fit_context(q.context, q.question, reserve=reserve)
        if cut is None:
            return None, "question too long"
        if not q.is_impossible and not any(self._span_kept(q, i, cut) for i in range(len(q.answers))):
            return None, "answer cut from context"
        ex = QAExample(
            id=q.id,
            prompt=self.prompt(q.context[:cut].rstrip(), q.question),
            completion="",
            answers=q.answers,
            target=q.answers[0] if q.answers else "",
            truncated=cut < len(q.context),
        )
        return ex, ""


def build_examples(
    builder: PromptBuilder,
    questions: Sequence[SquadQuestion],
    *,
    train: bool,
    keep_unanswerable: bool = False,
    reserve: int = 32,
) -> tuple[list[QAExample], BuildStats]:
    """Training (`train=True`) or evaluation examples for `questions`, and what was kept, cut and skipped.

    Skip reasons: ``unanswerable`` (SQuAD 2.0 question, without `keep_unanswerable`), ``answer cut from context``
    (the context had to be cut and no gold answer span is left in it), ``question too long`` (not even an empty
    context fits), ``empty answer`` (a gold answer of only whitespace). Every skip is counted and logged.
    """
    stats = BuildStats()
    out: list[QAExample] = []
    for q in questions:
        if train:
            ex, why = builder.train_example(q, keep_unanswerable=keep_unanswerable)
        elif q.is_impossible and not keep_unanswerable:
            ex, why = None, "unanswerable"
        else:
            ex, why = builder.eval_example(q, reserve=reserve)
        if ex is None:
            stats.skip(why)
            continue
        stats.kept += 1
        stats.truncated += ex.truncated
        out.append(ex)
    noted = {k: v for k, v in stats.skipped.items() if k != "unanswerable"}
    if noted:
        logger.info(
            "%s examples: kept %d, skipped %s (max_length %d)",
            "training" if train else "evaluation",
            stats.kept,
            ", ".join(f"{v} {k}" for k, v in sorted(noted.items())),
            builder.max_length,
        )
    return out, stats


# ----------------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------------


def _stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens that contain a newline, whitespace-only tokens, tokens with text before a newline), cached on the
    tokenizer object."""
    cached = getattr(tokenizer, "_curlora_stop_ids", None)
    if cached is not None:
        return cached
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])

    def ids(keep) -> torch.Tensor:
        return torch.tensor([i for i, t in enumerate(texts) if keep(t)], dtype=torch.long)

    sets = (
        ids(lambda t: "\n" in t),
        ids(lambda t: not t.strip()),
        ids(lambda t: "\n" in t and bool(t.split("\n", 1)[0].strip())),
    )
    try:
        tokenizer._curlora_stop_ids = sets
    except AttributeError:  # pragma: no cover - a tokenizer that refuses new attributes
        pass
    return sets


def _newline_stopper(token_sets: tuple[torch.Tensor, torch.Tensor, torch.Tensor], prompt_len: int):
    """A stopping criterion: a row is finished once a newline follows some answer text (leading newlines and
    spaces do not end the answer)."""
    from transformers import StoppingCriteria

    newline, blank, text_then_newline = token_sets

    class _StopAtNewline(StoppingCriteria):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
            new = input_ids[:, prompt_len:]
            if new.shape[1] == 0 or newline.numel() == 0:
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            is_text = ~torch.isin(new, blank.to(new.device))
            text_before = (torch.cumsum(is_text.long(), dim=1) - is_text.long()) > 0
            ends = torch.isin(new, newline.to(new.device)) & (
                text_before | torch.isin(new, text_then_newline.to(new.device))
            )
            return ends.any(dim=1)

    return _StopAtNewline()


def clean_answer(text: str, no_answer: str | None = NO_ANSWER) -> str:
    """The first non-empty line of a generation, stripped; the no-answer marker becomes the empty string."""
    answer = text.strip().split("\n", 1)[0].strip()
    if no_answer and normalize_answer(answer) == normalize_answer(no_answer):
        return ""
    return answer


@torch.inference_mode()
def generate_answers(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 32,
    device: str | torch.device | None = None,
    no_answer: str | None = NO_ANSWER,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Greedy answers to `prompts`, in order: batches of similar length, left padding, at most `max_new_tokens`
    new tokens, stopping at eos or at the first newline after some answer text; each answer is `clean_answer` of
    its generation. The model's train/eval mode is restored afterwards. ``progress(done, total)`` is called after
    every batch."""
    if batch_size < 1 or max_new_tokens < 1:
        raise CurloraError("batch_size and max_new_tokens must be >= 1")
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise CurloraError("the tokenizer has neither a pad nor an eos token; generation cannot pad")
    eos_ids = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos_ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    eos_ids.discard(None)
    token_sets = _stop_token_ids(tokenizer)

    encoded = [tokenizer(p, verbose=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]), reverse=True)
    answers: list[str] = [""] * len(prompts)
    was_training = bool(getattr(model, "training", False))
    model.eval()
    done = 0
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):  # left padding: the prompts end where generation starts
                seq = encoded[i]
                ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
                mask[row, width - len(seq) :] = 1
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                eos_token_id=sorted(eos_ids),
                pad_token_id=pad_id,
                stopping_criteria=[_newline_stopper(token_sets, width)],
                temperature=None,
                top_p=None,
                top_k=None,
            )
            for row, i in enumerate(idx):
                text = tokenizer.decode(out[row, width:].tolist(), skip_special_tokens=True)
                answers[i] = clean_answer(text, no_answer)
            done += len(idx)
            if progress is not None:
                progress(len(idx), len(prompts))
    finally:
        model.train(was_training)
    return answers


def evaluate_qa(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[QAExample],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 32,
    device: str | torch.device | None = None,
    no_answer: str | None = NO_ANSWER,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Greedy-generate an answer to every example and score it: ``squad_scores`` plus ``eval_s`` and
    ``predictions`` (a list of ``{"id", "prediction", "answers", "em", "f1"}``)."""
    if not examples:
        raise CurloraError("no evaluation questions left; hold out more articles or raise --max-length")
    t0 = time.perf_counter()
    preds = generate_answers(
        model,
        tokenizer,
        [e.prompt for e in examples],
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        device=device,
        no_answer=no_answer,
        progress=progress,
    )
    golds = [list(e.answers) for e in examples]
    scores: dict[str, Any] = dict(squad_scores(preds, golds))
    scores["eval_s"] = time.perf_counter() - t0
    scores["predictions"] = [
        {
            "id": e.id,
            "prediction": p,
            "answers": list(e.answers),
            "em": exact_match(p, e.answers),
            "f1": f1_score(p, e.answers),
        }
        for e, p in zip(examples, preds, strict=True)
    ]
    return scores
