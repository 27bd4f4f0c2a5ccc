"""Data loaders: the built-in VADER suite, the paper suite (GLUE, Sentiment140, WikiText-2), bad inputs."""

from __future__ import annotations

import hashlib
import io
import random
import sys
import tarfile
import types
from collections import Counter
from pathlib import Path

import pytest

from curlora.data import Example, Suite, Task, load_suite, prepare_builtin, subsample_train
from curlora.data import builtin as builtin_mod
from curlora.data.builtin import FILES, load_builtin_suite, read_ground_truth, resolve_source_dir
from curlora.data.paper import load_paper_suite, read_mrpc, read_sentiment140, read_sst2
from curlora.data.tasks import text_key
from curlora.errors import CurloraError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
VADER = SHARED / "vader"
needs_shared = pytest.mark.skipif(
    not (SHARED / "glue").is_dir() or not VADER.is_dir(),
    reason=f"shared reference data not found at {SHARED}",
)

MRPC_HEAD = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"


def keys(examples) -> set[str]:
    return {text_key(ex.text) for ex in examples}


# ---------------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def builtin_suite() -> Suite:
    return load_builtin_suite(source_dir=VADER)


@pytest.fixture(scope="module")
def paper_suite() -> Suite:
    return load_paper_suite(SHARED)


@needs_shared
def test_paper_suite_counts(paper_suite):
    assert [t.name for t in paper_suite.tasks] == ["mrpc", "sst2", "sentiment140"]
    mrpc, sst2, s140 = paper_suite.tasks
    assert mrpc.kind == "pair" and all(ex.text_pair for ex in mrpc.eval)
    assert len(mrpc.eval) == 408 and mrpc.label_counts("eval") == {"not paraphrase": 129, "paraphrase": 279}
    assert len(mrpc.train) in (3667, 3668)  # the shipped train.tsv holds 3667 data rows
    assert len(sst2.eval) == 872 and len(sst2.train) == 67349
    assert 0.4 < sum(ex.label for ex in sst2.eval) / len(sst2.eval) < 0.6
    assert len(s140.eval) == 359 and s140.label_counts("eval") == {"negative": 177, "positive": 182}
    # no training file here: trained on the VADER tweets, with a note saying so, and no eval text in train
    assert any("VADER tweets" in n for n in s140.notes) and any(
        "VADER tweets" in n for n in paper_suite.notes
    )
    assert 3000 < len(s140.train) and not keys(s140.train) & keys(s140.eval)
    assert not any("&amp;" in ex.text for ex in s140.eval)
    assert paper_suite.ppl_name == "wikitext-2-test"
    assert paper_suite.ppl_text.startswith("= Robert <unk> =\nRobert <unk> is an English film")
    assert "\n\n" not in paper_suite.ppl_text and "\n= = " in paper_suite.ppl_text


@needs_shared
def test_paper_suite_accepts_glue_folder_itself(paper_suite):
    other = load_paper_suite(SHARED / "glue")  # sentiment140/ and wikitext-2/ found one level up
    for a, b in zip(paper_suite.tasks, other.tasks, strict=True):
        assert (a.train, a.eval) == (b.train, b.eval)
    assert other.ppl_text == paper_suite.ppl_text


@needs_shared
def test_builtin_suite_real(builtin_suite):
    suite = builtin_suite
    assert [t.name for t in suite.tasks] == ["movies", "source", "tweets"]
    assert suite.ppl_name == "nyt-editorials" and suite.ppl_text.count("\n") == 5190 - 1
    sizes = {t.name: (len(t.train), len(t.eval)) for t in suite.tasks}
    assert sizes == {"movies": (9570, 500), "source": (10470, 450), "tweets": (2872, 500)}
    for task in suite.tasks:
        assert not keys(task.train) & keys(task.eval), task.name
        assert len(keys(task.train)) == len(task.train) and len(keys(task.eval)) == len(task.eval)
        assert all(v > 0 for v in task.label_counts("train").values())
        assert len(set(task.label_counts("eval").values())) == 1  # balanced eval
    movies, source, tweets = suite.tasks
    assert not keys(source.train + source.eval) & keys(movies.eval + tweets.eval)
    assert all(ex.text == ex.text.lower() for ex in source.train)
    ppl = {text_key(line) for line in suite.ppl_text.split("\n")}
    assert not ppl & keys(movies.train + source.train + tweets.train)


@needs_shared
def test_builtin_suite_is_deterministic(builtin_suite, tmp_path):
    again = load_suite("builtin", SHARED)  # the folder holding vader/ works too
    # the split depends on the texts only: shuffled files give the same splits
    rng = random.Random(0)
    for name in FILES:
        lines = (VADER / name).read_bytes().split(b"\r\n")
        rng.shuffle(lines)
        (tmp_path / name).write_bytes(b"\r\n".join(lines))
    shuffled = load_builtin_suite(tmp_path)
    for a, b, c in zip(builtin_suite.tasks, again.tasks, shuffled.tasks, strict=True):
        assert a.train == b.train and a.eval == b.eval
        assert set(a.eval) == set(c.eval) and Counter(a.train) == Counter(c.train)


# ---------------------------------------------------------------------------------------------- pip download


def test_prepare_builtin_downloads_the_sdist(tmp_path, monkeypatch):
    monkeypatch.setenv("CURLORA_CACHE", str(tmp_path / "cache"))
    try:
        folder = prepare_builtin()
    except CurloraError as e:
        if "pip download failed" in str(e):
            pytest.skip(f"PyPI registry not reachable: {e}")
        raise
    assert folder == tmp_path / "cache" / "data" / "vader"
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)
    if VADER.is_dir():
        for name in FILES:
            assert (folder / name).read_bytes() == (VADER / name).read_bytes()
    assert len(read_ground_truth(folder / builtin_mod.TWEETS_FILE)) == 4200

    def no_download(_):
        raise AssertionError("must not download again")

    monkeypatch.setattr(builtin_mod, "_pip_download", no_download)
    assert prepare_builtin() == folder  # files present: nothing to do
    (folder / builtin_mod.NYT_FILE).unlink()
    assert (
        prepare_builtin() == folder and (folder / builtin_mod.NYT_FILE).is_file()
    )  # re-extracted from cache
    assert len(load_builtin_suite().tasks) == 3

    sdist = tmp_path / "cache" / "downloads" / builtin_mod.SDIST_NAME
    good = sdist.read_bytes()

    def fake_download(folder):
        (folder / builtin_mod.SDIST_NAME).write_bytes(good)
        return folder / builtin_mod.SDIST_NAME

    monkeypatch.setattr(builtin_mod, "SDIST_SHA256", "0" * 64)
    monkeypatch.setattr(builtin_mod, "_pip_download", fake_download)
    with pytest.raises(CurloraError, match="SHA-256"):
        prepare_builtin(force=True)


def _targz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _fake_sdist(tmp_path, monkeypatch, inner: dict[str, bytes] | None) -> Path:
    """A stand-in sdist in the download cache, trusted by a patched checksum."""
    monkeypatch.setenv("CURLORA_CACHE", str(tmp_path / "cache"))
    members = {"vaderSentiment-3.3.2/setup.py": b""}
    if inner is not None:
        members["vaderSentiment-3.3.2/" + builtin_mod.INNER_ARCHIVE] = _targz(inner)
    data = _targz(members)
    path = tmp_path / "cache" / "downloads" / builtin_mod.SDIST_NAME
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    monkeypatch.setattr(builtin_mod, "SDIST_SHA256", hashlib.sha256(data).hexdigest())
    return path


def test_prepare_builtin_extracts_safely(tmp_path, monkeypatch):
    line = b"1\t1.5\tfine\r\n"
    inner = {f"../../../escape/{name}": line for name in FILES}
    inner["hutto_ICWSM_2014/other.txt"] = b"not wanted"
    _fake_sdist(tmp_path, monkeypatch, inner)
    folder = prepare_builtin()
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)
    assert not (tmp_path / "escape").exists() and not list(tmp_path.rglob("other.txt"))


def test_prepare_builtin_missing_members(tmp_path, monkeypatch):
    _fake_sdist(tmp_path, monkeypatch, None)
    with pytest.raises(CurloraError, match="has no additional_resources/hutto_ICWSM_2014.tar.gz"):
        prepare_builtin()
    _fake_sdist(tmp_path / "b", monkeypatch, {"hutto_ICWSM_2014/tweets_GroundTruth.txt": b"1\t1\tx\n"})
    with pytest.raises(CurloraError, match="lacks movieReviewSnippets_GroundTruth.txt"):
        prepare_builtin()


# ---------------------------------------------------------------------------------------------- subsample


def _task(n=20) -> Task:
    return Task("t", "single", ("a", "b"), [Example(f"x{i}", i % 2) for i in range(n)], [Example("e", 0),
                Example("f", 1)])  # fmt: skip


def test_subsample_train():
    task = _task()
    a, b, c = (
        subsample_train(task, 8, seed=1),
        subsample_train(task, 8, seed=1),
        subsample_train(task, 8, seed=2),
    )
    assert a.train == b.train and a.train != c.train and len(a.train) == 8
    assert a.eval == task.eval and len(task.train) == 20  # eval untouched, original not modified
    full = subsample_train(task, None, seed=3)
    assert Counter(full.train) == Counter(task.train) and full.train != task.train
    with pytest.raises(CurloraError, match="only 20"):
        subsample_train(task, 21, seed=0)
    with pytest.raises(CurloraError, match="positive integer"):
        subsample_train(task, 0, seed=0)
    with pytest.raises(CurloraError, match="one class"):
        subsample_train(task, 1, seed=0)


def test_task_validation():
    ok = [Example("a", 0), Example("b", 1)]
    with pytest.raises(CurloraError, match="only one class"):
        Task("t", "single", ("a", "b"), ok, [Example("c", 1), Example("d", 1)])
    with pytest.raises(CurloraError, match="empty eval split"):
        Task("t", "single", ("a", "b"), ok, [])
    with pytest.raises(CurloraError, match="label 2"):
        Task("t", "single", ("a", "b"), ok, [Example("c", 2)])
    with pytest.raises(CurloraError, match="no text_pair"):
        Task("t", "pair", ("a", "b"), ok, ok)
    with pytest.raises(CurloraError, match="kind"):
        Task("t", "triple", ("a", "b"), ok, ok)


def test_load_suite_unknown_name():
    with pytest.raises(CurloraError, match="builtin, paper"):
        load_suite("nope")


# ---------------------------------------------------------------------------------------------- bad inputs


def _write(path: Path, text: str, encoding="utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)
    return path


def _tiny_paper(root: Path, *, s140_train: bool) -> Path:
    mrpc = MRPC_HEAD + '1\t1\t2\tHe said "yes.\tHe agreed.\n0\t3\t4\tA cat.\tA "dog".\n'
    _write(root / "glue/MRPC/train.tsv", mrpc)
    _write(root / "glue/MRPC/dev.tsv", mrpc)
    sst = "sentence\tlabel\nit 's great . \t1\nawful \t0\n"
    _write(root / "glue/SST-2/train.tsv", sst)
    _write(root / "glue/SST-2/dev.tsv", sst)
    _write(root / "sentiment140/testdata.manual.2009.06.14.csv", '4,"good, really"\n0,bad &amp; sad\n2,meh\n',
           "latin-1")  # fmt: skip
    if s140_train:
        six = '"0","1","Mon","NO_QUERY","u","hate it"\n"4","2","Mon","NO_QUERY","u","caf\xe9 time"\n'
        _write(root / "sentiment140/training.1600000.processed.noemoticon.csv", six, "latin-1")
    _write(root / "vader/tweets_GroundTruth.txt", "1\t2.0\tlove it\r\n2\t-1.0\thate it\r\n3\t0.1\tok\r\n")
    _write(root / "wikitext-2-raw/wiki.test.raw", " \n = Title = \n \n Some text . \n")
    return root


def test_tiny_paper_layout(tmp_path):
    root = _tiny_paper(tmp_path, s140_train=True)
    suite = load_paper_suite(root)
    mrpc, sst2, s140 = suite.tasks
    assert mrpc.eval[0] == Example('He said "yes.', 1, "He agreed.")
    assert sst2.train[0] == Example("it 's great .", 1)
    assert s140.eval == [Example("good, really", 1), Example("bad & sad", 0)]
    assert s140.train == [Example("hate it", 0), Example("caf\xe9 time", 1)]
    assert "training.1600000" in s140.notes[0]
    assert suite.ppl_text == "= Title =\nSome text ."

    (root / "sentiment140/training.1600000.processed.noemoticon.csv").unlink()
    fallback = load_paper_suite(root).tasks[2]
    assert Counter(fallback.train) == Counter([Example("love it", 1), Example("hate it", 0)])
    assert "VADER tweets" in fallback.notes[0]


def test_sentiment140_forms(tmp_path):
    two = _write(tmp_path / "two.csv", '0,"no, bad"\n2,neutral\n4,yes\n', "latin-1")
    six = _write(tmp_path / "six.csv", '0,1,d,q,u,"no, bad"\n2,2,d,q,u,neutral\n4,3,d,q,u,yes\n', "latin-1")
    assert read_sentiment140(two) == read_sentiment140(six) == [Example("no, bad", 0), Example("yes", 1)]
    with pytest.raises(CurloraError, match=r"bad\.csv, line 1: 3 columns"):
        read_sentiment140(_write(tmp_path / "bad.csv", "0,x,y\n"))
    with pytest.raises(CurloraError, match=r"pol\.csv, line 2: polarity '3'"):
        read_sentiment140(_write(tmp_path / "pol.csv", "0,x\n3,y\n"))
    with pytest.raises(CurloraError, match=r"mix\.csv, line 2: 6 columns where earlier rows have 2"):
        read_sentiment140(_write(tmp_path / "mix.csv", "0,x\n4,1,d,q,u,y\n"))


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(CurloraError, match="does not exist"):
        load_paper_suite(tmp_path / "nope")
    with pytest.raises(CurloraError, match=r"glue/MRPC/train\.tsv"):
        load_paper_suite(tmp_path)
    root = _tiny_paper(tmp_path / "r", s140_train=False)
    (root / "glue/SST-2/dev.tsv").unlink()
    with pytest.raises(CurloraError, match=r"missing file .*glue/SST-2/dev\.tsv"):
        load_paper_suite(root)
    root = _tiny_paper(tmp_path / "s", s140_train=False)
    (root / "sentiment140/testdata.manual.2009.06.14.csv").unlink()
    with pytest.raises(CurloraError, match=r"sentiment140/testdata\.manual\.2009\.06\.14\.csv"):
        load_paper_suite(root)
    with pytest.raises(CurloraError, match="lack"):
        resolve_source_dir(tmp_path)


def test_malformed_tsv(tmp_path):
    with pytest.raises(CurloraError, match=r"h\.tsv, line 1: header"):
        read_sst2(_write(tmp_path / "h.tsv", "text\tlabel\nfine\t1\n"))
    with pytest.raises(CurloraError, match=r"c\.tsv, line 3: 3 tab-separated columns"):
        read_sst2(_write(tmp_path / "c.tsv", "sentence\tlabel\nfine\t1\nbad\t1\textra\n"))
    with pytest.raises(CurloraError, match=r"l\.tsv, line 2: label 'pos'"):
        read_sst2(_write(tmp_path / "l.tsv", "sentence\tlabel\nfine\tpos\n"))
    with pytest.raises(CurloraError, match=r"m\.tsv, line 2: Quality '1\.5'"):
        read_mrpc(_write(tmp_path / "m.tsv", MRPC_HEAD + "1.5\t1\t2\ta\tb\n"))
    with pytest.raises(CurloraError, match=r"v\.txt, line 2: rating '9'"):
        read_ground_truth(_write(tmp_path / "v.txt", "1\t1.0\tok\r\n2\t9\tbad\r\n"))


def test_one_class_task_from_files(tmp_path):
    root = _tiny_paper(tmp_path, s140_train=False)
    _write(root / "glue/SST-2/dev.tsv", "sentence\tlabel\ngood\t1\nnice\t1\n")
    with pytest.raises(CurloraError, match=r"'sst2'.*only one class.*SST-2"):
        load_paper_suite(root)


def test_hub_failure_message(monkeypatch):
    def unreachable(*args, **kwargs):
        raise ConnectionError("no route to huggingface.co")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=unreachable))
    with pytest.raises(CurloraError, match=r"hub is unreachable.*--data-dir"):
        load_suite("paper")
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(CurloraError, match=r"not installed.*--data-dir"):
        load_paper_suite(None)
