"""The paper's suite: MRPC -> SST-2 -> Sentiment140, perplexity on the WikiText-2 test set.

Files are read from a local folder in the GLUE distribution layout (``data_dir`` holds ``MRPC/`` and
``SST-2/``, or a ``glue/`` folder with them); ``sentiment140/`` and ``wikitext-2/`` are looked for beside
them:

* ``MRPC/train.tsv``, ``MRPC/dev.tsv``: UTF-8 with BOM, header ``Quality #1 ID #2 ID #1 String #2 String``
  (tab-separated), label = Quality (1 = paraphrase). Texts hold stray double quotes, so no CSV quoting.
* ``SST-2/train.tsv``, ``SST-2/dev.tsv``: header ``sentence label`` (1 = positive).
* ``RTE/train.tsv``, ``RTE/dev.tsv`` (read by ``read_rte``, used by the ``continual`` suite): the Hugging Face
  ``glue/rte`` export's header ``sentence1 sentence2 label idx``, label 0 = entailment, 1 = not entailment.
* Sentiment140: latin-1 CSV without header, either the original 6 columns (polarity, id, date, query, user,
  text) or 2 (polarity, text); polarity 0 negative, 2 neutral (dropped), 4 positive. The test file
  ``testdata.manual.2009.06.14.csv`` is the eval set. The training file
  ``training.1600000.processed.noemoticon.csv`` is used for training when present; otherwise the task trains
  on the built-in VADER tweets (binary) and says so in its notes.
* WikiText-2 ``test.txt`` (or ``wiki.test.tokens`` / ``wiki.test.raw``), raw or tokenized.

The GLUE test labels are not public, so MRPC and SST-2 evaluate on their dev sets, as usual.

Perplexity text: every non-blank line of the WikiText-2 test file, stripped, headings (`` = Title = ``) kept,
joined with a single ``"\\n"``. The Hugging Face perplexity guide instead joins the dataset's ``text`` entries
(one per line, blank ones included, each ending in ``"\\n"``) with ``"\\n\\n"``, which only adds runs of
newlines that the model would be scored on. Absolute values therefore differ a little from published
WikiText-2 numbers; the benchmark compares perplexities before and after training, on the same text.
"""

from __future__ import annotations

import csv
import html
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from curlora.data.builtin import (
    NEAR_ZERO,
    SENTIMENT_LABELS,
    TWEETS_FILE,
    prepare_builtin,
    read_ground_truth,
    resolve_source_dir,
    sentiment_examples,
)
from curlora.data.tasks import Example, Suite, Task, text_key
from curlora.errors import CurloraError

logger = logging.getLogger(__name__)

MRPC_HEADER = ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String")
SST2_HEADER = ("sentence", "label")
RTE_HEADER = ("sentence1", "sentence2", "label", "idx")
S140_TEST = "testdata.manual.2009.06.14.csv"
S140_TRAIN = "training.1600000.processed.noemoticon.csv"
S140_DIRS = ("sentiment140", "Sentiment140", "sentiment-140", "")
WIKITEXT_DIRS = ("wikitext-2", "wikitext-2-raw", "wikitext-2-v1", "wikitext-2-raw-v1", "")
WIKITEXT_FILES = ("test.txt", "wiki.test.tokens", "wiki.test.raw")
MRPC_LABELS = ("not paraphrase", "paraphrase")
RTE_LABELS = ("entailment", "not entailment")

_DATA_DIR_FIX = (
    "pass --data-dir pointing to the GLUE layout: a folder holding MRPC/ and SST-2/ (or a glue/ folder with "
    "them), with sentiment140/ and wikitext-2/ beside them"
)


def load_paper_suite(
    data_dir: str | os.PathLike | None,
    *,
    sentiment140_path: str | os.PathLike | None = None,
    wikitext_path: str | os.PathLike | None = None,
    vader_dir: str | os.PathLike | None = None,
) -> Suite:
    """The paper's suite from local files (``data_dir``), or from the Hugging Face hub without ``data_dir``.

    ``sentiment140_path`` / ``wikitext_path``: the Sentiment140 test CSV and the WikiText-2 test file (or
    folders holding them) when they are not in the usual places. ``vader_dir``: where the VADER ground-truth
    files are, for the Sentiment140 fallback training set (default: ``vader/`` beside the data, else
    ``prepare_builtin()``).
    """
    if data_dir is None:
        return _load_from_hub()
    glue, bases = data_roots(data_dir)
    mrpc = glue_task(glue, "mrpc")
    sst2 = glue_task(glue, "sst2")
    s140 = sentiment140_task(bases, sentiment140_path, vader_dir)
    ppl_text, wiki_path = wikitext_test(bases, wikitext_path)
    return _suite([mrpc, sst2, s140], ppl_text, s140.notes[0], str(wiki_path))


def data_roots(data_dir: str | os.PathLike) -> tuple[Path, list[Path]]:
    """(the folder holding the GLUE task folders, the folders to search for sentiment140/, wikitext-2/,
    vader/): ``data_dir`` itself, and its parent too when ``data_dir`` is the ``glue/`` folder itself."""
    root = Path(data_dir).expanduser()
    glue = _glue_root(root)
    return glue, ([root] if glue != root else [root, root.parent])


# name -> (GLUE folder, kind, label names, reader, header) for the GLUE tasks read from local files
def _glue_specs() -> dict:
    return {
        "mrpc": ("MRPC", "pair", MRPC_LABELS, read_mrpc, MRPC_HEADER),
        "sst2": ("SST-2", "single", SENTIMENT_LABELS, read_sst2, SST2_HEADER),
        "rte": ("RTE", "pair", RTE_LABELS, read_rte, RTE_HEADER),
    }


def glue_task(glue: Path, name: str) -> Task:
    """One GLUE task (``mrpc``, ``sst2`` or ``rte``): train.tsv for training, dev.tsv for evaluation."""
    folder_name, kind, labels, reader, header = _glue_specs()[name]
    folder = glue / folder_name
    hint = f"the GLUE distribution's {folder_name} files (tab-separated, header {' / '.join(header)})"
    return _task(
        name,
        kind,
        labels,
        reader(_require(folder / "train.tsv", hint)),
        reader(_require(folder / "dev.tsv", hint)),
        [f"GLUE {folder_name}: train.tsv for training, dev.tsv for evaluation (GLUE test labels are hidden)"],
        folder,
    )


def sentiment140_task(
    bases: list[Path],
    sentiment140_path: str | os.PathLike | None = None,
    vader_dir: str | os.PathLike | None = None,
) -> Task:
    """Sentiment140: eval on its test file; train on its 1.6M file, else on the VADER tweets (notes[0] says
    which)."""
    test_path, train_path = _find_sentiment140(bases, sentiment140_path)
    s140_eval = read_sentiment140(test_path)
    if train_path is not None:
        s140_train = read_sentiment140(train_path)
        s140_note = (
            f"Sentiment140: trained on {train_path.name}, evaluated on {test_path.name} (neutral dropped)"
        )
    else:
        s140_train = _vader_tweets(bases, vader_dir)
        s140_note = (
            f"Sentiment140: no training file ({S140_TRAIN}) found beside {test_path}, so trained on the "
            f"built-in VADER tweets (binary, |rating| >= {NEAR_ZERO}) and evaluated on the Sentiment140 "
            f"test set {test_path.name} (neutral tweets dropped)"
        )
    return _task(
        "sentiment140",
        "single",
        SENTIMENT_LABELS,
        _drop_eval_texts(s140_train, s140_eval),
        s140_eval,
        [s140_note],
        test_path,
    )


def wikitext_test(bases: list[Path], wikitext_path: str | os.PathLike | None = None) -> tuple[str, Path]:
    """(the perplexity text, the file it came from): the WikiText-2 test file, see ``wikitext_ppl_text``."""
    wiki_path = _find_wikitext(bases, wikitext_path)
    ppl_text = wikitext_ppl_text(_read_text(wiki_path).split("\n"))
    if not ppl_text:
        raise CurloraError(f"{wiki_path} has no text; replace it with the WikiText-2 test file")
    return ppl_text, wiki_path


def _suite(tasks: list[Task], ppl_text: str, s140_note: str, wiki_origin: str) -> Suite:
    notes = [
        "MRPC and SST-2 evaluate on the GLUE dev sets (GLUE test labels are hidden)",
        s140_note,
        f"perplexity: WikiText-2 test ({wiki_origin}), non-blank lines stripped and joined with a single "
        "newline, headings kept (the HF perplexity guide joins entries with blank lines: values differ "
        "slightly)",
    ]
    return Suite("paper", tasks, "wikitext-2-test", ppl_text, notes)


def _task(name, kind, labels, train, evals, notes, origin) -> Task:
    try:
        return Task(name, kind, labels, train, evals, notes)
    except CurloraError as e:
        raise CurloraError(f"{e} (data read from {origin})") from None


def _glue_root(root: Path) -> Path:
    if not root.is_dir():
        raise CurloraError(f"data folder {root} does not exist; {_DATA_DIR_FIX}")
    for cand in (root, root / "glue", root / "GLUE"):
        if (cand / "MRPC").is_dir() or (cand / "SST-2").is_dir():
            return cand
    raise CurloraError(
        f"{root} holds neither MRPC/ and SST-2/ nor glue/MRPC/ and glue/SST-2/ (expected for example "
        f"{root / 'glue' / 'MRPC' / 'train.tsv'}); put the GLUE distribution's MRPC and SST-2 folders "
        f"there, or {_DATA_DIR_FIX}"
    )


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise CurloraError(f"missing file {path}: put {what} there, or {_DATA_DIR_FIX}")
    return path


def _read_tsv(path: Path, header: tuple[str, ...]) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) for each data row of a GLUE TSV whose first line must be ``header``."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            first = next(reader, None)
            if first is None or tuple(c.strip() for c in first) != header:
                raise CurloraError(
                    f"{path}, line 1: header is {first!r}, expected {list(header)!r}; this is not the GLUE "
                    "distribution's file: replace it"
                )
            for fields in reader:
                if not any(c.strip() for c in fields):
                    continue
                if len(fields) != len(header):
                    raise CurloraError(
                        f"{path}, line {reader.line_num}: {len(fields)} tab-separated columns, expected "
                        f"{len(header)} ({', '.join(header)}); fix or replace the file"
                    )
                yield reader.line_num, fields
    except UnicodeDecodeError as e:
        raise CurloraError(
            f"{path} is not UTF-8 text ({e}); replace it with the GLUE distribution's file"
        ) from None


def _label(value: str, allowed: dict[str, int], path: Path, lineno: int, column: str) -> int:
    try:
        raw = int(value.strip())
    except ValueError:
        raw = None
    if raw is None or str(raw) not in allowed:
        raise CurloraError(
            f"{path}, line {lineno}: {column} {value!r} is not one of the integers {', '.join(allowed)}; "
            "fix or replace the file"
        )
    return allowed[str(raw)]


def read_mrpc(path: str | os.PathLike) -> list[Example]:
    """MRPC pairs from a GLUE ``train.tsv``/``dev.tsv``: label 1 = paraphrase."""
    path = Path(path)
    out = []
    for lineno, (quality, _id1, _id2, s1, s2) in _read_tsv(path, MRPC_HEADER):
        label = _label(quality, {"0": 0, "1": 1}, path, lineno, "Quality")
        out.append(Example(s1.strip(), label, s2.strip()))
    return out


def read_sst2(path: str | os.PathLike) -> list[Example]:
    """SST-2 sentences from a GLUE ``train.tsv``/``dev.tsv``: label 1 = positive."""
    path = Path(path)
    out = []
    for lineno, (sentence, label) in _read_tsv(path, SST2_HEADER):
        out.append(Example(sentence.strip(), _label(label, {"0": 0, "1": 1}, path, lineno, "label")))
    return out


def read_rte(path: str | os.PathLike) -> list[Example]:
    """RTE pairs (premise, hypothesis) from a GLUE ``train.tsv``/``dev.tsv`` in the Hugging Face export's
    layout: label 0 = entailment, 1 = not entailment."""
    path = Path(path)
    out = []
    for lineno, (s1, s2, label, _idx) in _read_tsv(path, RTE_HEADER):
        out.append(Example(s1.strip(), _label(label, {"0": 0, "1": 1}, path, lineno, "label"), s2.strip()))
    return out


def read_sentiment140(path: str | os.PathLike) -> list[Example]:
    """Binary examples from a Sentiment140 CSV (6- or 2-column form); neutral (polarity 2) tweets dropped."""
    path = Path(path)
    polarity = {"0": 0, "2": -1, "4": 1}
    out = []
    ncols = None
    with open(path, encoding="latin-1", newline="") as f:
        reader = csv.reader(f)
        try:
            for fields in reader:
                if not any(c.strip() for c in fields):
                    continue
                if ncols is None:
                    ncols = len(fields)
                    if ncols not in (2, 6):
                        raise CurloraError(
                            f"{path}, line {reader.line_num}: {ncols} columns; a Sentiment140 CSV has 6 "
                            "(polarity, id, date, query, user, text) or 2 (polarity, text): replace the file"
                        )
                elif len(fields) != ncols:
                    raise CurloraError(
                        f"{path}, line {reader.line_num}: {len(fields)} columns where earlier rows have "
                        f"{ncols}; fix or replace the file"
                    )
                label = _label(fields[0], polarity, path, reader.line_num, "polarity")
                text = html.unescape(fields[-1]).strip()
                if label >= 0 and text:
                    out.append(Example(text, label))
        except csv.Error as e:
            raise CurloraError(
                f"{path}, line {reader.line_num}: not valid CSV ({e}); fix or replace the file"
            ) from None
    return out


def _find_sentiment140(bases: list[Path], override: str | os.PathLike | None) -> tuple[Path, Path | None]:
    """(test file, training file or None)."""
    if override is not None:
        p = Path(override).expanduser()
        if p.is_file():
            train = p.parent / S140_TRAIN
            return p, (train if train.is_file() and train != p else None)
        if not p.is_dir():
            raise CurloraError(
                f"Sentiment140 path {p} does not exist; give the test CSV ({S140_TEST}) or its folder"
            )
        dirs = [p]
    else:
        dirs = [b / d if d else b for b in bases for d in S140_DIRS]
    dirs = [d for d in dirs if d.is_dir()]
    test = _first(dirs, [S140_TEST], ["*test*.csv"])
    if test is None:
        expected = (
            (Path(override) / S140_TEST) if override is not None else bases[0] / "sentiment140" / S140_TEST
        )
        raise CurloraError(
            f"missing Sentiment140 test file: expected {expected}; put the Sentiment140 test CSV "
            "(testdata.manual.2009.06.14.csv from the Sentiment140 distribution) there"
        )
    train = _first([test.parent, *dirs], [S140_TRAIN], ["training*.csv"])
    return test, train


def _first(dirs: list[Path], names: list[str], patterns: list[str]) -> Path | None:
    for d in dirs:
        for name in names:
            if (d / name).is_file():
                return d / name
    for d in dirs:
        for pattern in patterns:
            hits = sorted(p for p in d.glob(pattern) if p.is_file())
            if hits:
                return hits[0]
    return None


def _find_wikitext(bases: list[Path], override: str | os.PathLike | None) -> Path:
    if override is not None:
        p = Path(override).expanduser()
        if p.is_file():
            return p
        found = _first([p], list(WIKITEXT_FILES), []) if p.is_dir() else None
        if found is None:
            raise CurloraError(
                f"no WikiText-2 test file at {p}; give the test.txt file or the folder holding it"
            )
        return found
    dirs = [b / d if d else b for b in bases for d in WIKITEXT_DIRS]
    found = _first([d for d in dirs if d.is_dir()], list(WIKITEXT_FILES), [])
    if found is None:
        raise CurloraError(
            f"missing WikiText-2 test file: expected {bases[0] / 'wikitext-2' / 'test.txt'}; put the "
            "WikiText-2 test split there (test.txt, raw or tokenized; wiki.test.tokens / wiki.test.raw "
            "also work)"
        )
    return found


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise CurloraError(
            f"{path} is not UTF-8 text ({e}); replace it with the WikiText-2 test file"
        ) from None


def wikitext_ppl_text(lines) -> str:
    """Non-blank lines, stripped, joined with one newline (headings such as ``= Title =`` kept)."""
    return "\n".join(s for s in (line.strip() for line in lines) if s)


def _vader_tweets(bases: list[Path], vader_dir: str | os.PathLike | None) -> list[Example]:
    if vader_dir is not None:
        folder = resolve_source_dir(vader_dir)
    else:
        folder = next((b / "vader" for b in bases if (b / "vader" / TWEETS_FILE).is_file()), None)
        if folder is None:
            folder = prepare_builtin()
    return sentiment_examples(read_ground_truth(folder / TWEETS_FILE))


def _drop_eval_texts(train: list[Example], evals: list[Example]) -> list[Example]:
    keys = {text_key(ex.text) for ex in evals}
    kept = [ex for ex in train if text_key(ex.text) not in keys]
    if len(kept) != len(train):
        logger.info("dropped %d training texts that are also in the eval set", len(train) - len(kept))
    return kept


def _load_from_hub() -> Suite:
    """The same suite from the Hugging Face hub (needs the `datasets` package and network access)."""
    try:
        import datasets
    except ImportError:
        raise CurloraError(
            f"no data folder given and the `datasets` package is not installed, so the hub cannot be tried; "
            f"{_DATA_DIR_FIX}"
        ) from None
    logger.info("no data folder given: loading the paper's data from the Hugging Face hub")
    try:
        mrpc = datasets.load_dataset("nyu-mll/glue", "mrpc")
        sst2 = datasets.load_dataset("nyu-mll/glue", "sst2")
        s140 = datasets.load_dataset("stanfordnlp/sentiment140")
        wiki = datasets.load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split="test")
    except Exception as e:  # any hub, network or format failure means the same thing to the user
        raise CurloraError(
            f"the Hugging Face hub is unreachable or could not serve the paper's data ({type(e).__name__}: "
            f"{e}); {_DATA_DIR_FIX}"
        ) from None

    def pairs(split):
        return [Example(r["sentence1"], int(r["label"]), r["sentence2"]) for r in split]

    def singles(split):
        return [Example(r["sentence"], int(r["label"])) for r in split]

    def tweets(split):
        return [
            Example(html.unescape(r["text"]).strip(), int(r["sentiment"] == 4))
            for r in split
            if r["sentiment"] in (0, 4)
        ]

    note = "Sentiment140: trained on the hub's training split, evaluated on its test split (neutral dropped)"
    s140_eval = tweets(s140["test"])
    tasks = [
        Task(
            "mrpc", "pair", MRPC_LABELS, pairs(mrpc["train"]), pairs(mrpc["validation"]), ["GLUE MRPC (hub)"]
        ),
        Task(
            "sst2",
            "single",
            SENTIMENT_LABELS,
            singles(sst2["train"]),
            singles(sst2["validation"]),
            ["GLUE SST-2 (hub)"],
        ),
        Task(
            "sentiment140",
            "single",
            SENTIMENT_LABELS,
            _drop_eval_texts(tweets(s140["train"]), s140_eval),
            s140_eval,
            [note],
        ),
    ]
    ppl_text = wikitext_ppl_text(line for entry in wiki["text"] for line in entry.split("\n"))
    return _suite(tasks, ppl_text, note, "hub: Salesforce/wikitext wikitext-2-raw-v1")
