"""Task suites for the continual-learning benchmark.

* ``builtin`` (default): movies -> source -> tweets from the VADER sentiment corpora, fetched from PyPI
  (the ``vaderSentiment==3.3.2`` sdist) on first use; perplexity on NYT editorial snippets.
* ``paper``: MRPC -> SST-2 -> Sentiment140 from local files in the GLUE layout; perplexity on WikiText-2 test.
* ``continual``: MRPC -> SST-2 -> RTE -> domain (which VADER corpus) -> Amazon review sentiment -> Sentiment140,
  from the paper suite's local layout plus ``glue/RTE`` and ``vader/``; no eval text in any train split;
  perplexity on WikiText-2 test (see ``curlora.data.continual``).

``load_suite(..., order=[...])`` keeps some of a suite's tasks, in the given order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from curlora.data.builtin import load_builtin_suite, prepare_builtin
from curlora.data.continual import load_continual_suite
from curlora.data.paper import load_paper_suite
from curlora.data.tasks import Example, Suite, Task, carve_validation, select_tasks, subsample_train
from curlora.errors import CurloraError

SUITES = ("builtin", "paper", "continual")

__all__ = [
    "SUITES",
    "Example",
    "Suite",
    "Task",
    "carve_validation",
    "load_builtin_suite",
    "load_continual_suite",
    "load_paper_suite",
    "load_suite",
    "prepare_builtin",
    "select_tasks",
    "subsample_train",
]


def load_suite(
    name: str, data_dir: str | os.PathLike | None = None, order: Sequence[str] | None = None
) -> Suite:
    """Load a suite by name.

    ``data_dir``: for ``builtin``, a folder with the four VADER ``*_GroundTruth.txt`` files (or a
    ``vader/`` folder holding them) instead of the PyPI download; for ``paper``, the folder in the GLUE
    layout (without it the Hugging Face hub is tried); for ``continual``, the same layout (required).
    ``order``: task names to keep, in training order (at least one, each once); ``None`` keeps the suite's.
    """
    key = str(name).strip().lower()
    if key == "builtin":
        suite = load_builtin_suite(source_dir=data_dir)
    elif key == "paper":
        suite = load_paper_suite(data_dir)
    elif key == "continual":
        suite = load_continual_suite(data_dir)
    else:
        raise CurloraError(f"unknown suite {name!r}; choose one of: {', '.join(SUITES)}")
    return select_tasks(suite, order)
