"""The data model shared by every suite: examples, classification tasks, a suite of tasks in training order.

Every task is a text classification problem with integer labels ``0 .. len(label_names) - 1``. A ``Task``
checks itself when built: both splits non-empty, labels in range, pair tasks carry a second text, and each
split holds at least two classes. Splits are fixed by the loaders (see ``stable_order``) so they never depend
on the run seed; only ``subsample_train`` takes the run seed. ``carve_validation`` moves a fixed, stratified
part of the training rows into an optional ``val`` split (checked like the others when non-empty);
``select_tasks`` keeps some of a suite's tasks, in a given order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from curlora.errors import CurloraError

logger = logging.getLogger(__name__)

KINDS = ("single", "pair")


@dataclass(frozen=True)
class Example:
    text: str
    label: int
    text_pair: str | None = None


@dataclass
class Task:
    name: str
    kind: str
    label_names: tuple[str, ...]
    train: list[Example]
    eval: list[Example]
    notes: list[str] = field(default_factory=list)
    val: list[Example] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.label_names = tuple(self.label_names)
        if self.kind not in KINDS:
            raise CurloraError(f"task {self.name!r} has kind {self.kind!r}; use one of {', '.join(KINDS)}")
        if len(self.label_names) < 2:
            raise CurloraError(
                f"task {self.name!r} has {len(self.label_names)} label name(s); a classification task "
                "needs at least two: give one name per class"
            )
        for split in ("train", "eval"):
            self._check_split(split, getattr(self, split))
        if self.val:
            self._check_split("val", self.val)

    def _check_split(self, split: str, examples: Sequence[Example]) -> None:
        if not examples:
            raise CurloraError(
                f"task {self.name!r} has an empty {split} split; check that its data files are complete"
            )
        n_labels = len(self.label_names)
        for i, ex in enumerate(examples):
            if not isinstance(ex.label, int) or isinstance(ex.label, bool) or not 0 <= ex.label < n_labels:
                raise CurloraError(
                    f"task {self.name!r} {split} example {i} has label {ex.label!r}; labels must be "
                    f"integers in 0..{n_labels - 1} ({', '.join(self.label_names)}): fix the data or "
                    "the label names"
                )
            if self.kind == "pair" and ex.text_pair is None:
                raise CurloraError(
                    f"task {self.name!r} is a pair task but {split} example {i} has no text_pair; give both "
                    "texts, or make the task kind 'single'"
                )
        counts = Counter(ex.label for ex in examples)
        if len(counts) < 2:
            (only,) = counts
            raise CurloraError(
                f"task {self.name!r}: the {split} split has only one class ({self.label_names[only]!r}, "
                f"{len(examples)} examples); each split needs at least two classes: check that the data "
                "files are complete and not filtered to one label"
            )
        missing = [self.label_names[k] for k in range(n_labels) if k not in counts]
        if missing:
            logger.warning("task %r: the %s split lacks class(es) %s", self.name, split, ", ".join(missing))

    def label_counts(self, split: str = "train") -> dict[str, int]:
        """Examples per class name in one split ("train", "eval" or "val")."""
        counts = Counter(ex.label for ex in getattr(self, split))
        return {name: counts.get(k, 0) for k, name in enumerate(self.label_names)}


@dataclass
class Suite:
    name: str
    tasks: list[Task]
    ppl_name: str
    ppl_text: str
    notes: list[str]

    def __post_init__(self) -> None:
        if not self.tasks:
            raise CurloraError(f"suite {self.name!r} has no tasks; give at least one task")
        names = [t.name for t in self.tasks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise CurloraError(
                f"suite {self.name!r} has duplicate task names {dupes}; give each task its own name"
            )
        if not self.ppl_text.strip():
            raise CurloraError(
                f"suite {self.name!r}: the perplexity text {self.ppl_name!r} is empty; check its source file"
            )

    def task(self, name: str) -> Task:
        for t in self.tasks:
            if t.name == name:
                return t
        raise CurloraError(
            f"suite {self.name!r} has no task {name!r}; choose one of {', '.join(t.name for t in self.tasks)}"
        )


def subsample_train(task: Task, n: int | None, seed: int) -> Task:
    """A copy of ``task`` whose train split is shuffled with ``seed`` and cut to its first ``n`` examples.

    ``n=None`` keeps every example (still shuffled). The eval split is left as it is, so runs with different
    seeds or sizes are evaluated on the same examples.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise CurloraError(f"the subsample seed must be an integer, got {seed!r}")
    available = len(task.train)
    if n is None:
        n = available
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise CurloraError(f"the number of training examples must be a positive integer or None, got {n!r}")
    if n > available:
        raise CurloraError(
            f"asked for {n} training examples of task {task.name!r}, but it has only {available}: "
            f"use n <= {available} (or no limit to take them all)"
        )
    order = list(range(available))
    random.Random(seed).shuffle(order)
    train = [task.train[i] for i in order[:n]]
    if len({ex.label for ex in train}) < 2:
        raise CurloraError(
            f"the {n} training examples drawn from task {task.name!r} with seed {seed} hold only one class; "
            "use a larger n"
        )
    return dataclasses.replace(
        task, train=train, eval=list(task.eval), notes=list(task.notes), val=list(task.val)
    )


VAL_SEED = "curlora-val-v1"  # with the task name, fixes every validation split; never the run seed


def carve_validation(task: Task, n: int) -> Task:
    """A copy of ``task`` whose ``val`` split holds ``n`` of its training examples, removed from ``train``.

    The examples are drawn stratified by label (each class gives its share of ``n``, largest remainders
    rounded up) in an order fixed by ``VAL_SEED``, the task name and the texts alone, so the split is the same
    for every run seed. ``n = 0`` returns ``task`` itself.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise CurloraError(f"the validation size must be a non-negative integer, got {n!r}")
    if n == 0:
        return task
    if task.val:
        raise CurloraError(
            f"task {task.name!r} already has a validation split ({len(task.val)} examples); carve it once"
        )
    available = len(task.train)
    if n >= available:
        raise CurloraError(
            f"cannot carve {n} validation examples from the {available} training examples of task "
            f"{task.name!r}: use n < {available} so that training data remains"
        )
    counts = Counter(ex.label for ex in task.train)
    labels = sorted(counts)
    exact = {k: n * counts[k] / available for k in labels}
    quota = {k: int(exact[k]) for k in labels}
    by_remainder = sorted(labels, key=lambda k: (-(exact[k] - quota[k]), k))
    for k in by_remainder[: n - sum(quota.values())]:
        quota[k] += 1
    left = {k: counts[k] - quota[k] for k in labels}
    if sum(1 for k in labels if quota[k]) < 2 or sum(1 for k in labels if left[k]) < 2:
        raise CurloraError(
            f"carving {n} validation examples from task {task.name!r} (train classes "
            f"{ {task.label_names[k]: counts[k] for k in labels} }) would leave fewer than two classes in "
            "the validation or the training split; choose another n"
        )
    picked: set[int] = set()
    for k in labels:
        idx = [i for i, ex in enumerate(task.train) if ex.label == k]
        ordered = stable_order(idx, f"{VAL_SEED}/{task.name}/{k}", key=lambda i: _pair_key(task.train[i]))
        picked.update(ordered[: quota[k]])
    train = [ex for i, ex in enumerate(task.train) if i not in picked]
    val = [task.train[i] for i in sorted(picked)]
    return dataclasses.replace(task, train=train, eval=list(task.eval), notes=list(task.notes), val=val)


def _pair_key(ex: Example) -> str:
    return ex.text if ex.text_pair is None else f"{ex.text}\x00{ex.text_pair}"


def select_tasks(suite: Suite, order: Sequence[str] | None) -> Suite:
    """``suite`` with only the tasks named in ``order``, in that order (``None``: unchanged)."""
    if order is None:
        return suite
    names = [t.name for t in suite.tasks]
    choices = f"choose one or more of {', '.join(names)} (each once)"
    if isinstance(order, str) or not list(order):
        raise CurloraError(f"the task order for suite {suite.name!r} must be a non-empty list of names; {choices}")
    unknown = [o for o in order if o not in names]
    if unknown:
        raise CurloraError(f"suite {suite.name!r} has no task(s) {', '.join(map(repr, unknown))}; {choices}")
    dupes = sorted({o for o in order if list(order).count(o) > 1})
    if dupes:
        raise CurloraError(f"the task order for suite {suite.name!r} names {', '.join(dupes)} twice; {choices}")
    notes = list(suite.notes)
    if list(order) != names:
        notes.append(f"tasks selected and ordered: {' -> '.join(order)}")
    return dataclasses.replace(suite, tasks=[suite.task(o) for o in order], notes=notes)


def text_key(text: str) -> str:
    """The key under which two texts count as duplicates: case-folded, whitespace collapsed."""
    return " ".join(text.casefold().split())


def dedup(items: Iterable, key=lambda item: item.text) -> list:
    """Keep the first item of every group whose texts share a ``text_key``; order is preserved."""
    seen: set[str] = set()
    out = []
    for item in items:
        k = text_key(key(item))
        if k not in seen:
            seen.add(k)
            out.append(item)
    return out


def stable_order(items: Iterable, salt: str, key=lambda item: item.text) -> list:
    """``items`` in a pseudo-random order fixed by ``salt`` and each item's text alone.

    The order does not depend on the input order, the Python version, or any run seed: each item is ranked by
    the SHA-256 of ``salt`` and its ``text_key``.
    """

    def rank(item) -> tuple[bytes, str]:
        k = text_key(key(item))
        return hashlib.sha256(f"{salt}\x00{k}".encode()).digest(), k

    return sorted(items, key=rank)


def split_balanced(
    examples: Sequence[Example], eval_per_class: int, salt: str, n_labels: int, *, task: str
) -> tuple[list[Example], list[Example]]:
    """Fixed split: ``eval_per_class`` examples of each class go to eval, the rest to train (no text in both).

    ``examples`` must already be free of duplicate texts.
    """
    train: list[Example] = []
    evals: list[Example] = []
    for label in range(n_labels):
        group = stable_order([ex for ex in examples if ex.label == label], salt)
        if len(group) <= eval_per_class:
            raise CurloraError(
                f"task {task!r}: class {label} has {len(group)} examples, too few for {eval_per_class} eval "
                "examples plus training data; check that the source files are complete"
            )
        evals.extend(group[:eval_per_class])
        train.extend(group[eval_per_class:])
    return stable_order(train, salt + "/train"), stable_order(evals, salt + "/eval")
