"""The ``continual`` suite: six tasks that mix paraphrase, sentiment, entailment and domain shifts.

Read from the paper suite's local layout (``data_dir`` holds ``glue/{MRPC,SST-2,RTE}``, with ``vader/``,
``sentiment140/`` and ``wikitext-2/`` beside them; see ``curlora.data.paper``). Tasks, in the default order:

* ``mrpc``: GLUE MRPC paraphrase pairs, train.tsv / dev.tsv (Microsoft Research Paraphrase Corpus licence).
* ``sst2``: GLUE SST-2 movie sentence sentiment, train.tsv / dev.tsv (Stanford Sentiment Treebank).
* ``rte``: GLUE RTE entailment pairs, train.tsv / dev.tsv (PASCAL RTE 1, 2, 3, 5; research use).
* ``domain``: which VADER corpus a snippet comes from: tweet / movie review / product review / news editorial
  (Hutto & Gilbert 2014, MIT). Texts lowercased (the Amazon snippets ship lowercased, so case would give the
  answer away), texts found in two corpora dropped, the same number per class; eval ``EVAL_PER_CLASS`` per
  class, training from the rest.
* ``amazon``: VADER Amazon review snippet sentiment, |mean rating| < ``NEAR_ZERO`` dropped; eval
  ``EVAL_PER_CLASS`` per class, training from the rest (which keeps the corpus imbalance).
* ``sentiment140``: exactly the paper suite's task (eval: the Sentiment140 test file, neutral dropped;
  training: the 1.6M file, or the VADER tweets when it is absent).

Perplexity text: the WikiText-2 test file, built as the paper suite builds it.

No leaks: no eval text (either text of a pair) of any task is in the train split of any task, compared by
``text_key``. The Amazon eval set is drawn first (avoiding the GLUE dev sets and the Sentiment140 test set);
the domain pool then avoids every eval set so far (the VADER movie snippets are the source of SST, so some are
SST-2 dev sentences); last, every train split drops the texts of every eval set. Splits are fixed by
``SPLIT_SEED`` and never depend on the run seed.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from curlora.data.builtin import (
    AMAZON_FILE,
    MOVIES_FILE,
    NEAR_ZERO,
    NYT_FILE,
    SENTIMENT_LABELS,
    TWEETS_FILE,
    balanced_corpora,
    read_ground_truth,
    resolve_source_dir,
    sentiment_examples,
)
from curlora.data.paper import data_roots, glue_task, sentiment140_task, wikitext_test
from curlora.data.tasks import Example, Suite, Task, split_balanced, text_key
from curlora.errors import CurloraError

logger = logging.getLogger(__name__)

SPLIT_SEED = "curlora-continual-v1"  # fixes every split; never the run seed
EVAL_PER_CLASS = {"domain": 100, "amazon": 200}
DOMAIN_LABELS = ("tweet", "movie review", "product review", "news editorial")
DOMAIN_FILES = (TWEETS_FILE, MOVIES_FILE, AMAZON_FILE, NYT_FILE)  # in DOMAIN_LABELS order
VADER_NOTE = "VADER sentiment ground truth (Hutto & Gilbert 2014, MIT licence)"


def load_continual_suite(
    data_dir: str | os.PathLike | None, *, vader_dir: str | os.PathLike | None = None
) -> Suite:
    """The continual suite from the local data folder ``data_dir`` (the paper suite's layout).

    ``vader_dir``: where the four VADER ``*_GroundTruth.txt`` files are (default: ``vader/`` beside the GLUE
    data, else the cache filled by ``prepare_builtin()``).
    """
    if data_dir is None:
        raise CurloraError(
            "the continual suite reads local files only: pass --data-dir pointing to a folder holding "
            "glue/MRPC, glue/SST-2 and glue/RTE, with vader/, sentiment140/ and wikitext-2/ beside them"
        )
    glue, bases = data_roots(data_dir)
    if vader_dir is None:
        vader_dir = next((b / "vader" for b in bases if (b / "vader" / AMAZON_FILE).is_file()), None)
    vader = resolve_source_dir(vader_dir)
    glue_tasks = [glue_task(glue, name) for name in ("mrpc", "sst2", "rte")]
    s140 = sentiment140_task(bases, vader_dir=vader)
    external = set().union(*(keys_of(t.eval) for t in [*glue_tasks, s140]))

    amazon_rows = read_ground_truth(vader / AMAZON_FILE)
    amazon_train, amazon_eval = split_balanced(
        [ex for ex in sentiment_examples(amazon_rows) if text_key(ex.text) not in external],
        EVAL_PER_CLASS["amazon"],
        f"{SPLIT_SEED}/amazon",
        2,
        task="amazon",
    )
    corpora = [amazon_rows if name == AMAZON_FILE else read_ground_truth(vader / name) for name in DOMAIN_FILES]
    domain = _domain_task(corpora, external | keys_of(amazon_eval))
    amazon = Task(
        "amazon",
        "single",
        SENTIMENT_LABELS,
        amazon_train,
        amazon_eval,
        [
            f"VADER Amazon product-review snippets, {VADER_NOTE}; |mean rating| < {NEAR_ZERO} dropped; eval "
            f"{EVAL_PER_CLASS['amazon']} per class (fixed by {SPLIT_SEED!r}), training from the rest (keeps "
            "the corpus imbalance)"
        ],
    )
    wiki_text, wiki_path = wikitext_test(bases)
    tasks = _without_eval_texts([*glue_tasks, domain, amazon, s140])
    notes = [
        "MRPC, SST-2 and RTE evaluate on the GLUE dev sets (GLUE test labels are hidden)",
        f"domain and amazon: {VADER_NOTE}; splits fixed by split seed {SPLIT_SEED!r}, the same for every "
        "run seed",
        s140.notes[0],
        "no eval text (either text of a pair) of any task is in the train split of any task",
        f"perplexity: WikiText-2 test ({wiki_path}), non-blank lines stripped and joined with a single "
        "newline, headings kept (as the paper suite)",
    ]
    return Suite("continual", tasks, "wikitext-2-test", wiki_text, notes)


def keys_of(examples: list[Example]) -> set[str]:
    """The ``text_key`` of every text, both texts of a pair included."""
    keys = {text_key(ex.text) for ex in examples}
    keys.update(text_key(ex.text_pair) for ex in examples if ex.text_pair is not None)
    return keys


def _leaks(ex: Example, keys: set[str]) -> bool:
    return text_key(ex.text) in keys or (ex.text_pair is not None and text_key(ex.text_pair) in keys)


def _without_eval_texts(tasks: list[Task]) -> list[Task]:
    """Every task with the training examples that share a text with any eval set of the suite dropped."""
    keys = set().union(*(keys_of(t.eval) for t in tasks))
    out = []
    for t in tasks:
        train = [ex for ex in t.train if not _leaks(ex, keys)]
        dropped = len(t.train) - len(train)
        if dropped:
            logger.info("task %r: dropped %d training examples that share a text with an eval set", t.name, dropped)
            note = f"{dropped} training examples dropped: they share a text with an eval set of the suite"
            t = dataclasses.replace(t, train=train, notes=[*t.notes, note])
        out.append(t)
    return out


def _domain_task(corpora: list[list[tuple[str, float, str]]], excluded: set[str]) -> Task:
    """Which corpus a snippet comes from (`curlora.data.builtin.balanced_corpora`)."""
    balanced, per_class = balanced_corpora(corpora, excluded, f"{SPLIT_SEED}/domain-pool")
    train, evals = split_balanced(
        balanced, EVAL_PER_CLASS["domain"], f"{SPLIT_SEED}/domain", len(DOMAIN_LABELS), task="domain"
    )
    return Task(
        "domain",
        "single",
        DOMAIN_LABELS,
        train,
        evals,
        [
            f"which corpus a snippet comes from ({', '.join(DOMAIN_LABELS)}), {VADER_NOTE}; texts lowercased "
            "because the Amazon snippets ship lowercased; texts in two corpora dropped; "
            f"{per_class} per class, eval {EVAL_PER_CLASS['domain']} per class (fixed by {SPLIT_SEED!r}), "
            "training from the rest; no text is in another task's eval set",
        ],
    )
