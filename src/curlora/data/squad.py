"""SQuAD-format question answering data: the official JSON files (v1.1 and v2.0) or the Hugging Face hub.

Everything is grouped by article (a Wikipedia page), because train/eval splits must not share an article:
questions about the same paragraph are near-duplicates of each other.

* `load_squad(source)`: a path to an official JSON file (``{"version", "data": [{"title", "paragraphs": [...]}]}``),
  or a hub dataset id such as ``rajpurkar/squad_v2`` (loaded with `datasets`; a clear `CurloraError` when the hub
  cannot be reached).
* `split_articles(articles, eval_articles=...)`: a deterministic split by article: the LAST articles (in file order)
  are held out for evaluation, the ones before them are trained on.
* `sample_questions(...)`: a deterministic, seeded subset of questions, kept in file order.

SQuAD 2.0 marks unanswerable questions with ``is_impossible: true`` and an empty ``answers`` list; SQuAD 1.1 files
have no such field (every question is answerable). `SquadQuestion.is_impossible` covers both.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from curlora.errors import CurloraError
from curlora.files import looks_like_path

logger = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = [
    "SquadArticle",
    "SquadQuestion",
    "count_questions",
    "load_squad",
    "parse_squad",
    "sample_questions",
    "split_articles",
]


@dataclass(frozen=True)
class SquadQuestion:
    """One question with its paragraph. ``answer_starts[i]`` is the character offset of ``answers[i]`` in
    ``context``, or -1 when the file's offset does not point at the answer text (the text is then searched for)."""

    id: str
    article: str
    context: str
    question: str
    answers: tuple[str, ...] = ()
    answer_starts: tuple[int, ...] = ()
    is_impossible: bool = False


@dataclass(frozen=True)
class SquadArticle:
    title: str
    questions: tuple[SquadQuestion, ...]

    @property
    def n_answerable(self) -> int:
        return sum(not q.is_impossible for q in self.questions)


def count_questions(articles: Iterable[SquadArticle]) -> dict[str, int]:
    qs = [q for a in articles for q in a.questions]
    answerable = sum(not q.is_impossible for q in qs)
    return {"questions": len(qs), "answerable": answerable, "unanswerable": len(qs) - answerable}


# ----------------------------------------------------------------------------------------------------------------
# Official JSON
# ----------------------------------------------------------------------------------------------------------------


def _fail(source: str, where: str, problem: str) -> CurloraError:
    return CurloraError(
        f"{source}: {where}: {problem}. A SQuAD file looks like "
        '{"version": "v2.0", "data": [{"title": ..., "paragraphs": [{"context": ..., "qas": [{"id": ..., '
        '"question": ..., "answers": [{"text": ..., "answer_start": ...}]}]}]}]}'
    )


def _get(obj: Any, key: str, kind: type | tuple[type, ...], source: str, where: str) -> Any:
    if not isinstance(obj, dict):
        raise _fail(source, where, f"expected a JSON object, found {type(obj).__name__}")
    if key not in obj:
        raise _fail(source, where, f"missing key {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise _fail(source, f"{where}.{key}", f"expected {names}, found {type(value).__name__}")
    return value


def _locate(context: str, text: str, start: int) -> int:
    """The answer's character offset: the given one when it points at the text, else the first occurrence, else -1."""
    if 0 <= start and context[start : start + len(text)] == text:
        return start
    return context.find(text)


def parse_squad(obj: Any, source: str = "SQuAD data") -> list[SquadArticle]:
    """Validate a decoded official SQuAD JSON object and turn it into articles. `source` names it in errors."""
    data = _get(obj, "data", list, source, "top level")
    articles: list[SquadArticle] = []
    moved = 0
    for a_idx, article in enumerate(data):
        where_a = f"data[{a_idx}]"
        paragraphs = _get(article, "paragraphs", list, source, where_a)
        title = article.get("title")
        title = str(title) if isinstance(title, str) and title.strip() else f"article-{a_idx}"
        questions: list[SquadQuestion] = []
        for p_idx, paragraph in enumerate(paragraphs):
            where_p = f"{where_a}.paragraphs[{p_idx}]"
            context = _get(paragraph, "context", str, source, where_p)
            qas = _get(paragraph, "qas", list, source, where_p)
            for q_idx, qa in enumerate(qas):
                where_q = f"{where_p}.qas[{q_idx}]"
                question = _get(qa, "question", str, source, where_q)
                qid = _get(qa, "id", (str, int), source, where_q)
                answers = _get(qa, "answers", list, source, where_q)
                impossible = qa.get("is_impossible", False)
                if not isinstance(impossible, bool):
                    raise _fail(source, f"{where_q}.is_impossible", "expected true or false")
                texts: list[str] = []
                starts: list[int] = []
                for n_idx, answer in enumerate(answers):
                    where_n = f"{where_q}.answers[{n_idx}]"
                    text = _get(answer, "text", str, source, where_n)
                    start = _get(answer, "answer_start", int, source, where_n)
                    located = _locate(context, text, start)
                    moved += located != start
                    texts.append(text)
                    starts.append(located)
                if not impossible and not texts:
                    impossible = True  # SQuAD 1.1-style file with an empty answer list
                if impossible:
                    texts, starts = [], []
                questions.append(
                    SquadQuestion(
                        id=str(qid),
                        article=title,
                        context=context,
                        question=question.strip(),
                        answers=tuple(texts),
                        answer_starts=tuple(starts),
                        is_impossible=impossible,
                    )
                )
        articles.append(SquadArticle(title=title, questions=tuple(questions)))
    if moved:
        logger.debug("%s: %d answer offsets did not point at their text and were searched for", source, moved)
    ids = [q.id for a in articles for q in a.questions]
    if len(set(ids)) != len(ids):
        logger.warning("%s: %d question ids are repeated", source, len(ids) - len(set(ids)))
    return articles


def _load_json(path: Path) -> list[SquadArticle]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CurloraError(f"{path} is not UTF-8 text ({exc}); pass an official SQuAD JSON file") from None
    except OSError as exc:
        raise CurloraError(f"cannot read {path}: {exc}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CurloraError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "pass an official SQuAD JSON file such as dev-v2.0.json"
        ) from None
    return parse_squad(obj, str(path))


# ----------------------------------------------------------------------------------------------------------------
# The hub
# ----------------------------------------------------------------------------------------------------------------


def _from_rows(rows: Iterable[dict], source: str) -> list[SquadArticle]:
    """Hub rows (``id, title, context, question, answers: {text: [...], answer_start: [...]}``) -> articles."""
    by_title: dict[str, list[SquadQuestion]] = {}
    for i, row in enumerate(rows):
        try:
            context, question, answers = row["context"], row["question"], row["answers"]
            texts, starts = list(answers["text"]), list(answers["answer_start"])
        except (KeyError, TypeError) as exc:
            raise CurloraError(
                f"{source}: row {i} is not in the SQuAD layout (id, title, context, question, answers.text, "
                f"answers.answer_start): missing {exc}"
            ) from None
        title = str(row.get("title") or "untitled")
        located = [_locate(context, t, s) for t, s in zip(texts, starts, strict=False)]
        by_title.setdefault(title, []).append(
            SquadQuestion(
                id=str(row.get("id", i)),
                article=title,
                context=context,
                question=str(question).strip(),
                answers=tuple(texts),
                answer_starts=tuple(located),
                is_impossible=not texts,
            )
        )
    return [SquadArticle(title=t, questions=tuple(qs)) for t, qs in by_title.items()]


def _load_hub(name: str, split: str) -> list[SquadArticle]:
    try:
        import datasets
    except ImportError:
        raise CurloraError(f"{name!r} is not a file; loading it from the hub needs `pip install datasets`") from None
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as exc:  # noqa: BLE001 - datasets raises many unrelated types for "not reachable"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CurloraError(
            f"could not load SQuAD data {name!r} (split {split!r}) from the Hugging Face hub: {first}. "
            "Pass the path of an official SQuAD JSON file instead, e.g. --data dev-v2.0.json"
        ) from None
    return _from_rows(ds, f"{name}[{split}]")


def load_squad(source: str | os.PathLike, *, split: str = "validation") -> list[SquadArticle]:
    """Articles from an official SQuAD JSON file, or from a hub dataset id (``split`` picks its split).

    Raises `CurloraError` for a missing file, invalid JSON, a file that is not in the SQuAD layout (the message
    names the first offending key), a hub that cannot be reached, or data without any question.
    """
    name = os.fspath(source)
    path = Path(name).expanduser()
    if path.is_dir():
        raise CurloraError(f"{path} is a folder; pass the SQuAD JSON file itself (e.g. {path}/dev-v2.0.json)")
    if path.is_file():
        articles = _load_json(path)
    elif looks_like_path(name, file_suffixes=(".json", ".jsonl")):
        raise CurloraError(f"SQuAD file {path} does not exist; check the path")
    else:
        articles = _load_hub(name, split)
    articles = [a for a in articles if a.questions]
    if not articles:
        raise CurloraError(f"{name}: no questions found; the file holds no paragraphs with questions")
    return articles


# ----------------------------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------------------------


def _n_eval_articles(n: int, eval_articles: float) -> int:
    if isinstance(eval_articles, bool) or eval_articles <= 0:
        raise CurloraError(f"eval_articles must be a count >= 1 or a fraction in (0, 1), got {eval_articles!r}")
    if eval_articles < 1:
        k = max(1, math.ceil(n * eval_articles))
    elif float(eval_articles).is_integer():
        k = int(eval_articles)
    else:
        raise CurloraError(f"eval_articles must be a whole number of articles or a fraction < 1, got {eval_articles}")
    if k >= n:
        raise CurloraError(
            f"holding out {k} article(s) for evaluation leaves none of the {n} to train on; "
            "hold out fewer (--eval-articles) or use a file with more articles"
        )
    return k


def split_articles(
    articles: Sequence[SquadArticle], *, eval_articles: float = 1, train_articles: int | None = None
) -> tuple[list[SquadArticle], list[SquadArticle]]:
    """(train, eval) by article, deterministically: the last `eval_articles` articles (a count, or a fraction of
    them rounded up) are held out; training uses the articles before them, at most `train_articles` of them
    (the first ones)."""
    k = _n_eval_articles(len(articles), eval_articles)
    train, held_out = list(articles[:-k]), list(articles[-k:])
    if train_articles is not None:
        if train_articles < 1:
            raise CurloraError(f"train_articles must be >= 1, got {train_articles}")
        train = train[:train_articles]
    return train, held_out


def sample_questions(questions: Sequence[T], n: int | None, seed: int) -> list[T]:
    """A seeded subset of `n` items (questions or built examples) in their original order; all of them when `n`
    is None or at least their number."""
    if n is None or n >= len(questions):
        return list(questions)
    if n < 1:
        raise CurloraError(f"the number of questions must be >= 1, got {n}")
    keep = sorted(random.Random(seed).sample(range(len(questions)), n))
    return [questions[i] for i in keep]
