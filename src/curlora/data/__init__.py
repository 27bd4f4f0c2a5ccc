"""Task suites for the continual-learning benchmark.

* ``builtin`` (default): movies -> source -> tweets from the VADER sentiment corpora, fetched from PyPI
  (the ``vaderSentiment==3.3.2`` sdist) on first use; perplexity on NYT editorial snippets.
* ``paper``: MRPC -> SST-2 -> Sentiment140 from local files in the GLUE layout; perplexity on WikiText-2 test.
"""

from __future__ import annotations

import os

from curlora.data.builtin import load_builtin_suite, prepare_builtin
from curlora.data.paper import load_paper_suite
from curlora.data.tasks import Example, Suite, Task, subsample_train
from curlora.errors import CurloraError

SUITES = ("builtin", "paper")

__all__ = [
    "SUITES",
    "Example",
    "Suite",
    "Task",
    "load_builtin_suite",
    "load_paper_suite",
    "load_suite",
    "prepare_builtin",
    "subsample_train",
]


def load_suite(name: str, data_dir: str | os.PathLike | None = None) -> Suite:
    """Load a suite by name.

    ``data_dir``: for ``builtin``, a folder with the four VADER ``*_GroundTruth.txt`` files (or a
    ``vader/`` folder holding them) instead of the PyPI download; for ``paper``, the folder in the GLUE
    layout (without it the Hugging Face hub is tried).
    """
    key = str(name).strip().lower()
    if key == "builtin":
        return load_builtin_suite(source_dir=data_dir)
    if key == "paper":
        return load_paper_suite(data_dir)
    raise CurloraError(f"unknown suite {name!r}; choose one of: {', '.join(SUITES)}")
