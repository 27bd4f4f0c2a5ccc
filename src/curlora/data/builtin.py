"""The built-in suite: three tasks from the VADER sentiment ground truth, available offline on any machine.

Source: Hutto & Gilbert (ICWSM 2014), MIT licence. The four ``*_GroundTruth.txt`` files ship inside
``additional_resources/hutto_ICWSM_2014.tar.gz`` of the *source* distribution of ``vaderSentiment==3.3.2``
(the wheel lacks them). ``prepare_builtin`` fetches that sdist with pip, checks its SHA-256 and extracts only
the four files into ``cache_dir()/data/vader``.

File format: UTF-8 (CRLF line ends), one snippet a line, three tab-separated fields: id, mean human rating in
[-4, 4], text. Texts carry HTML entities (``&amp;``, ``&lt;``), which are unescaped here. A file that is not
valid UTF-8 is read as cp1252 (with a warning), the usual encoding of such older corpora.

Tasks, in training order (splits fixed by ``SPLIT_SEED``, independent of the run seed):

* ``movies``: movie-review snippet sentiment, negative/positive. Snippets rated within ``NEAR_ZERO`` of 0 are
  dropped (about 5% of them), since their sign is noise.
* ``source``: which corpus a snippet comes from: tweet / movie review / product review (Amazon), the same
  number of snippets per class, all ratings kept. All texts are lowercased, because the Amazon snippets ship
  lowercased and case alone would otherwise give the answer away. None of its texts is in the ``movies`` or
  ``tweets`` eval sets; its texts do overlap the ``movies``/``tweets`` *train* sets (with a different label).
* ``tweets``: tweet sentiment, negative/positive, near-zero ratings dropped; positive tweets outnumber
  negative ones about 2:1 in the corpus, so train keeps that imbalance while eval is balanced.

Each eval set has the same number of examples per class, so chance accuracy is 1/#classes. Within a corpus,
texts equal up to case and whitespace are kept once (the choice does not depend on line order), so no text is
in both splits.
Perplexity text: the NYT editorial snippets, in file order, one per line; no task uses them, and task texts
that also occur among them (three short Amazon snippets such as "yes.") are dropped.
"""

from __future__ import annotations

import html
import io
import logging
import os
import tarfile
from pathlib import Path

from curlora.data.tasks import Example, Suite, Task, dedup, split_balanced, stable_order, text_key
from curlora.errors import CurloraError
from curlora.files import atomic_dir, cache_dir, pip_download, sha256_file

logger = logging.getLogger(__name__)

VADER_REQUIREMENT = "vaderSentiment==3.3.2"
SDIST_NAME = "vaderSentiment-3.3.2.tar.gz"
# SHA-256 of vaderSentiment-3.3.2.tar.gz as served by PyPI (computed once from a fresh `pip download`).
SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
INNER_ARCHIVE = "additional_resources/hutto_ICWSM_2014.tar.gz"

MOVIES_FILE = "movieReviewSnippets_GroundTruth.txt"
TWEETS_FILE = "tweets_GroundTruth.txt"
AMAZON_FILE = "amazonReviewSnippets_GroundTruth.txt"
NYT_FILE = "nytEditorialSnippets_GroundTruth.txt"
FILES = (MOVIES_FILE, TWEETS_FILE, AMAZON_FILE, NYT_FILE)

NEAR_ZERO = 0.5  # sentiment tasks keep snippets with |mean rating| >= NEAR_ZERO
SPLIT_SEED = "curlora-builtin-v1"  # fixes every split; never the run seed
EVAL_PER_CLASS = {"movies": 250, "source": 150, "tweets": 250}
SENTIMENT_LABELS = ("negative", "positive")
SOURCE_LABELS = ("tweet", "movie review", "product review")

_MAX_MEMBER_BYTES = 64 * 1024 * 1024  # refuse absurd archive members instead of reading them into memory
_PIP_TIMEOUT_S = 600


def builtin_dir() -> Path:
    """Where ``prepare_builtin`` puts the four ground-truth files."""
    return cache_dir() / "data" / "vader"


def _has_files(folder: Path) -> bool:
    return all((folder / name).is_file() for name in FILES)


def prepare_builtin(force: bool = False) -> Path:
    """Make sure the VADER ground-truth files are in ``cache_dir()/data/vader`` and return that folder.

    Downloads the ``vaderSentiment==3.3.2`` sdist with pip (the PyPI registry must be reachable) unless it is
    already in ``cache_dir()/downloads``; ``force`` re-extracts (and re-downloads a bad sdist).
    """
    dest = builtin_dir()
    if not force and _has_files(dest):
        return dest
    downloads = cache_dir() / "downloads"
    sdist = _find_sdist(downloads)
    if sdist is not None and sha256_file(sdist) != SDIST_SHA256:
        logger.warning("ignoring %s: its SHA-256 does not match; downloading it again", sdist)
        sdist.unlink()
        sdist = None
    if sdist is None:
        sdist = _pip_download(downloads)
    digest = sha256_file(sdist)
    if digest != SDIST_SHA256:
        raise CurloraError(
            f"{sdist} has SHA-256 {digest}, expected {SDIST_SHA256}: the download is corrupt or not the "
            f"official {VADER_REQUIREMENT} sdist; delete it and run again "
            "(or check your package index settings)"
        )
    contents = _extract_ground_truth(sdist)
    with atomic_dir(dest) as tmp:
        for name, data in contents.items():
            (tmp / name).write_bytes(data)
    logger.info("extracted the VADER ground-truth files to %s", dest)
    return dest


def _find_sdist(folder: Path) -> Path | None:
    if not folder.is_dir():
        return None
    for p in sorted(folder.iterdir()):
        if p.name.lower() == SDIST_NAME.lower() and p.is_file():
            return p
    return None


def _pip_download(downloads: Path) -> Path:
    logger.info("downloading the %s source distribution (for its sentiment corpora)", VADER_REQUIREMENT)
    fix = (
        f"check that the PyPI registry is reachable, or download {SDIST_NAME} yourself into {downloads}, or "
        f"put the four *_GroundTruth.txt files into {builtin_dir()}"
    )
    reason = pip_download(VADER_REQUIREMENT, downloads, binary=False, timeout=_PIP_TIMEOUT_S)
    if reason is not None:
        raise CurloraError(f"pip download failed for {VADER_REQUIREMENT}: {reason}; {fix}")
    sdist = _find_sdist(downloads)
    if sdist is None:
        raise CurloraError(
            f"pip download failed: it succeeded but left no {SDIST_NAME} in {downloads}; {fix}"
        )
    return sdist


def _read_member(archive: tarfile.TarFile, member: tarfile.TarInfo, where: Path | str) -> bytes:
    if not member.isreg():
        raise CurloraError(
            f"{where}: member {member.name} is not a regular file; the archive is not as expected"
        )
    if member.size > _MAX_MEMBER_BYTES:
        raise CurloraError(f"{where}: member {member.name} is implausibly large ({member.size} bytes)")
    f = archive.extractfile(member)
    assert f is not None  # regular files always have a file object
    return f.read()


def _extract_ground_truth(sdist: Path) -> dict[str, bytes]:
    """The bytes of the four ground-truth files, read from the archive inside the sdist.

    Nothing is extracted to disk by member name: only the wanted members are read, and they are written under
    names of our own, so archive paths cannot escape the destination.
    """
    try:
        with tarfile.open(sdist, mode="r:gz") as outer:
            inner_member = next(
                (m for m in outer.getmembers() if m.name.split("/", 1)[-1] == INNER_ARCHIVE), None
            )
            if inner_member is None:
                raise CurloraError(
                    f"{sdist} has no {INNER_ARCHIVE}; it is not the {VADER_REQUIREMENT} sdist: delete it and "
                    "run again"
                )
            inner_bytes = _read_member(outer, inner_member, sdist)
        where = f"{sdist}!{INNER_ARCHIVE}"
        with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
            by_name = {}
            for m in inner.getmembers():
                base = m.name.rsplit("/", 1)[-1]
                if base in FILES and m.isreg() and base not in by_name:
                    by_name[base] = m
            missing = [name for name in FILES if name not in by_name]
            if missing:
                raise CurloraError(
                    f"{where} lacks {', '.join(missing)}; the sdist is not as expected: delete {sdist} "
                    "and run again, or pass a folder holding the four *_GroundTruth.txt files"
                )
            return {name: _read_member(inner, by_name[name], where) for name in FILES}
    except (tarfile.TarError, OSError, EOFError) as e:
        raise CurloraError(f"cannot read {sdist} ({e}); delete it and run again") from None


def resolve_source_dir(source_dir: str | os.PathLike | None) -> Path:
    """The folder holding the four ground-truth files: ``source_dir`` itself or its ``vader/`` subfolder;
    without ``source_dir``, the cache filled by ``prepare_builtin``."""
    if source_dir is None:
        return prepare_builtin()
    folder = Path(source_dir).expanduser()
    for cand in (folder, folder / "vader"):
        if _has_files(cand):
            return cand
    missing = [name for name in FILES if not (folder / name).is_file()]
    raise CurloraError(
        f"{folder} lacks the VADER ground-truth file(s) {', '.join(missing)}; put the four *_GroundTruth.txt "
        "files of vaderSentiment's hutto_ICWSM_2014 archive there (or in a vader/ subfolder), or leave the "
        "folder out to download them from PyPI"
    )


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        logger.warning("%s is not valid UTF-8; reading it as cp1252", path)
        return data.decode("cp1252", errors="replace")


def read_ground_truth(path: str | os.PathLike) -> list[tuple[str, float, str]]:
    """``(id, mean rating, text)`` for every line of one ``*_GroundTruth.txt`` file, in file order."""
    path = Path(path)
    if not path.is_file():
        raise CurloraError(f"missing VADER ground-truth file {path}; put the *_GroundTruth.txt files there")
    rows = []
    for lineno, line in enumerate(_decode(path).split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t", 2)
        if len(fields) != 3:
            raise CurloraError(
                f"{path}, line {lineno}: expected 3 tab-separated fields (id, rating, text), found "
                f"{len(fields)}; the file is not a VADER ground-truth file"
            )
        ident, rating_s, text = fields
        try:
            rating = float(rating_s)
        except ValueError:
            rating = float("nan")
        if not -4.0 <= rating <= 4.0:
            raise CurloraError(
                f"{path}, line {lineno}: rating {rating_s!r} is not a number in [-4, 4]; the file is corrupt"
            )
        text = html.unescape(text).strip()
        if text:
            rows.append((ident, rating, text))
    if not rows:
        raise CurloraError(f"{path} holds no snippets; replace it with the complete file")
    return rows


def unique_rows(rows: list[tuple[str, float, str]]) -> list[tuple[str, float, str]]:
    """One row per text (equal up to case and whitespace), chosen independently of the file's line order."""
    return dedup(sorted(rows, key=lambda r: (r[2], r[1], r[0])), key=lambda r: r[2])


def sentiment_examples(rows: list[tuple[str, float, str]], threshold: float = NEAR_ZERO) -> list[Example]:
    """Binary sentiment examples (0 negative, 1 positive), duplicates and |rating| < threshold dropped."""
    return [
        Example(text, int(rating > 0)) for _, rating, text in unique_rows(rows) if abs(rating) >= threshold
    ]


def load_builtin_suite(source_dir: str | os.PathLike | None = None) -> Suite:
    """The built-in suite movies -> source -> tweets, perplexity on NYT editorial snippets.

    ``source_dir``: a folder holding the four ``*_GroundTruth.txt`` files (or a ``vader/`` folder with them);
    without it they come from ``prepare_builtin()``.
    """
    folder = resolve_source_dir(source_dir)
    movies_rows = read_ground_truth(folder / MOVIES_FILE)
    tweets_rows = read_ground_truth(folder / TWEETS_FILE)
    amazon_rows = read_ground_truth(folder / AMAZON_FILE)
    nyt_rows = read_ground_truth(folder / NYT_FILE)

    ppl_lines = [text for _, _, text in nyt_rows]
    ppl_keys = {text_key(line) for line in ppl_lines}
    thr_note = f"snippets with |mean rating| < {NEAR_ZERO} dropped as near-neutral"
    train, evals = split_balanced(
        _without(sentiment_examples(movies_rows), ppl_keys),
        EVAL_PER_CLASS["movies"],
        f"{SPLIT_SEED}/movies",
        2,
        task="movies",
    )
    movies = Task(
        "movies",
        "single",
        SENTIMENT_LABELS,
        train,
        evals,
        [f"VADER movie-review snippets (Hutto & Gilbert 2014); {thr_note}"],
    )
    train, evals = split_balanced(
        _without(sentiment_examples(tweets_rows), ppl_keys),
        EVAL_PER_CLASS["tweets"],
        f"{SPLIT_SEED}/tweets",
        2,
        task="tweets",
    )
    tweets = Task(
        "tweets",
        "single",
        SENTIMENT_LABELS,
        train,
        evals,
        [
            f"VADER tweets (Hutto & Gilbert 2014); {thr_note}; train keeps the corpus imbalance "
            "(about 2:1 positive), eval is balanced"
        ],
    )
    source = _source_task(
        [tweets_rows, movies_rows, amazon_rows], ppl_keys | keys_of(movies.eval) | keys_of(tweets.eval)
    )
    notes = [
        f"data: VADER sentiment ground truth (Hutto & Gilbert 2014, MIT licence), {VADER_REQUIREMENT} sdist",
        f"splits fixed by split seed {SPLIT_SEED!r}: eval sets are the same for every run seed",
        f"eval sets balanced per class: {', '.join(f'{k} {v}/class' for k, v in EVAL_PER_CLASS.items())}",
        f"sentiment tasks drop |mean rating| < {NEAR_ZERO}",
        "source texts avoid the movies/tweets eval sets but overlap their train sets (with another label)",
        f"perplexity: {len(ppl_lines)} NYT editorial snippets, one per line; no task text is among them",
    ]
    return Suite("builtin", [movies, source, tweets], "nyt-editorials", "\n".join(ppl_lines), notes)


def keys_of(examples: list[Example]) -> set[str]:
    return {text_key(ex.text) for ex in examples}


def _without(examples: list[Example], keys: set[str]) -> list[Example]:
    return [ex for ex in examples if text_key(ex.text) not in keys]


def balanced_corpora(
    corpora: list[list[tuple[str, float, str]]], excluded: set[str], pool_seed: str
) -> tuple[list[Example], int]:
    """Examples labelled by the corpus they come from (label k: corpora[k]): lowercased texts, the same count per
    class (the first of each pool in `stable_order(pool, pool_seed)`), no text in two corpora, none of the
    ``excluded`` texts. Returns the examples and the count per class."""
    keyed = [{text_key(text): text for _, _, text in unique_rows(rows)} for rows in corpora]
    seen_in: dict[str, int] = {}
    for keys in keyed:
        for k in keys:
            seen_in[k] = seen_in.get(k, 0) + 1
    pools = [
        [Example(text.lower(), label) for k, text in keys.items() if seen_in[k] == 1 and k not in excluded]
        for label, keys in enumerate(keyed)
    ]
    per_class = min(len(p) for p in pools)
    return [ex for pool in pools for ex in stable_order(pool, pool_seed)[:per_class]], per_class


def _source_task(corpora: list[list[tuple[str, float, str]]], excluded: set[str]) -> Task:
    """Which corpus a snippet comes from (`balanced_corpora`)."""
    balanced, _ = balanced_corpora(corpora, excluded, f"{SPLIT_SEED}/source-pool")
    train, evals = split_balanced(
        balanced, EVAL_PER_CLASS["source"], f"{SPLIT_SEED}/source", len(SOURCE_LABELS), task="source"
    )
    return Task(
        "source",
        "single",
        SOURCE_LABELS,
        train,
        evals,
        [
            "which corpus a VADER snippet comes from (tweets, movie reviews, Amazon product reviews); texts "
            "lowercased because the Amazon snippets ship lowercased; balanced per class; no text is in the "
            "movies or tweets eval sets",
        ],
    )
