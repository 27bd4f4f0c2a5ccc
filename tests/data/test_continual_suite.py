"""The continual suite, the RTE reader, task selection/order, and validation splits carved from training rows."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from curlora.data import Example, Task, carve_validation, load_suite, select_tasks, subsample_train
from curlora.data.continual import DOMAIN_LABELS, keys_of, load_continual_suite
from curlora.data.paper import RTE_LABELS, read_rte
from curlora.data.tasks import Suite
from curlora.errors import CurloraError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_continual_data = pytest.mark.skipif(
    not (SHARED / "glue" / "RTE").is_dir() or not (SHARED / "vader").is_dir(),
    reason=f"shared reference data (glue/RTE and vader/) not found at {SHARED}",
)

RTE_HEAD = "sentence1\tsentence2\tlabel\tidx\n"


# ------------------------------------------------------------------------------------------------ RTE reader


def test_read_rte(tmp_path):
    p = tmp_path / "train.tsv"
    p.write_text(RTE_HEAD + "A cat sat.\tAn animal sat.\t0\t0\n\nIt rained.\tIt was sunny.\t1\t1\n", "utf-8")
    assert read_rte(p) == [Example("A cat sat.", 0, "An animal sat."), Example("It rained.", 1, "It was sunny.")]
    assert RTE_LABELS == ("entailment", "not entailment")


def test_read_rte_bad_header_and_rows(tmp_path):
    p = tmp_path / "dev.tsv"
    p.write_text("premise\thypothesis\tlabel\tidx\na\tb\t0\t0\n", "utf-8")
    with pytest.raises(CurloraError, match=r"dev\.tsv, line 1: header"):
        read_rte(p)
    p.write_text(RTE_HEAD + "a\tb\t0\t0\na\tb\tentailment\t1\n", "utf-8")
    with pytest.raises(CurloraError, match=r"dev\.tsv, line 3: label 'entailment'"):
        read_rte(p)
    p.write_text(RTE_HEAD + "a\tb\t0\n", "utf-8")
    with pytest.raises(CurloraError, match=r"line 2: 3 tab-separated columns, expected 4"):
        read_rte(p)


# -------------------------------------------------------------------------------------------- continual suite


@pytest.fixture(scope="module")
def continual():
    return load_continual_suite(SHARED)


@needs_continual_data
def test_continual_suite_real(continual):
    assert continual.name == "continual" and continual.ppl_name == "wikitext-2-test"
    assert [t.name for t in continual.tasks] == ["mrpc", "sst2", "rte", "domain", "amazon", "sentiment140"]
    labels = {t.name: t.label_names for t in continual.tasks}
    assert labels["rte"] == RTE_LABELS and labels["domain"] == DOMAIN_LABELS
    assert labels["amazon"] == labels["sst2"] == labels["sentiment140"] == ("negative", "positive")
    kinds = {t.name: t.kind for t in continual.tasks}
    assert kinds["mrpc"] == kinds["rte"] == "pair" and kinds["domain"] == "single"
    rte = continual.task("rte")
    assert len(rte.eval) == 277 and 2000 < len(rte.train) <= 2490
    domain = continual.task("domain")
    assert set(domain.label_counts("eval").values()) == {100}
    assert len(set(domain.label_counts("train").values())) == 1  # balanced
    assert all(ex.text == ex.text.lower() for ex in domain.train + domain.eval)
    amazon = continual.task("amazon")
    assert set(amazon.label_counts("eval").values()) == {200}
    assert len(continual.task("sentiment140").eval) == 359
    # same perplexity text as the paper suite
    assert continual.ppl_text == load_suite("paper", SHARED).ppl_text
    assert all(t.notes for t in continual.tasks)


@needs_continual_data
def test_continual_no_eval_text_in_any_train(continual):
    evals = set().union(*(keys_of(t.eval) for t in continual.tasks))
    for t in continual.tasks:
        assert not keys_of(t.train) & evals, t.name
    # the domain task's corpora do not share texts across classes
    domain = continual.task("domain")
    by_key = {}
    for ex in domain.train + domain.eval:
        by_key.setdefault(keys_of([ex]).pop(), set()).add(ex.label)
    assert all(len(v) == 1 for v in by_key.values())


@needs_continual_data
def test_continual_is_deterministic(continual):
    again = load_suite("continual", SHARED)
    for a, b in zip(continual.tasks, again.tasks, strict=True):
        assert a.train == b.train and a.eval == b.eval and a.notes == b.notes


@needs_continual_data
def test_continual_order(continual):
    suite = load_suite("continual", SHARED, order=["amazon", "rte"])
    assert [t.name for t in suite.tasks] == ["amazon", "rte"]
    assert suite.task("amazon").eval == continual.task("amazon").eval
    with pytest.raises(CurloraError, match="mrpc, sst2, rte, domain, amazon, sentiment140"):
        load_suite("continual", SHARED, order=["rte", "qnli"])


def test_continual_needs_a_folder(tmp_path):
    with pytest.raises(CurloraError, match="--data-dir"):
        load_suite("continual")
    with pytest.raises(CurloraError, match="does not exist"):
        load_suite("continual", tmp_path / "nope")


# ------------------------------------------------------------------------------------------------ task order


def _task(name: str, n: int = 20, labels=(0, 1)) -> Task:
    return Task(name, "single", ("a", "b", "c"), [Example(f"{name} {i}", labels[i % len(labels)]) for i in range(n)],
                [Example(f"{name} e0", 0), Example(f"{name} e1", 1)])  # fmt: skip


def _suite() -> Suite:
    return Suite("toy", [_task("x"), _task("y"), _task("z")], "ppl", "some text", ["note"])


def test_select_tasks():
    suite = _suite()
    assert select_tasks(suite, None) is suite
    chosen = select_tasks(suite, ["z", "x"])
    assert [t.name for t in chosen.tasks] == ["z", "x"] and chosen.name == "toy"
    assert [t.name for t in suite.tasks] == ["x", "y", "z"]  # the original is untouched
    assert any("z -> x" in n for n in chosen.notes)
    assert select_tasks(suite, ["x", "y", "z"]).notes == ["note"]
    for bad, match in [(["x", "w"], "no task.*'w'"), (["x", "x"], "names x twice"), ([], "non-empty"),
                       ("x", "non-empty")]:  # fmt: skip
        with pytest.raises(CurloraError, match=match) as e:
            select_tasks(suite, bad)
        assert "x, y, z" in str(e.value)


def test_load_suite_order_on_builtin():
    vader = SHARED / "vader"
    if not vader.is_dir():
        pytest.skip(f"shared VADER data not found at {vader}")
    suite = load_suite("builtin", vader, order=["tweets"])
    assert [t.name for t in suite.tasks] == ["tweets"]
    with pytest.raises(CurloraError, match="movies, source, tweets"):
        load_suite("builtin", vader, order=["tweets", "tweets"])


# ---------------------------------------------------------------------------------------------- validation


def test_carve_validation_stratified_and_fixed():
    task = _task("t", n=100, labels=(0, 0, 0, 1))  # 75 / 25
    carved = carve_validation(task, 20)
    assert Counter(ex.label for ex in carved.val) == {0: 15, 1: 5}
    assert len(carved.train) == 80 and not set(carved.train) & set(carved.val)
    assert sorted(carved.train + carved.val, key=lambda ex: ex.text) == sorted(task.train, key=lambda ex: ex.text)
    assert carved.eval == task.eval and task.val == [] and len(task.train) == 100  # the original is untouched
    # fixed: the same again, and independent of the training rows' order
    assert carve_validation(task, 20).val == carved.val
    shuffled = Task("t", "single", task.label_names, list(reversed(task.train)), task.eval)
    assert set(carve_validation(shuffled, 20).val) == set(carved.val)
    # depends on the task name only through its seed: another name draws other rows
    other = carve_validation(Task("u", "single", task.label_names, task.train, task.eval), 20)
    assert set(other.val) != set(carved.val)
    assert carved.label_counts("val") == {"a": 15, "b": 5, "c": 0}


def test_carve_validation_kept_by_subsample():
    carved = carve_validation(_task("t", n=40), 10)
    sub = subsample_train(carved, 8, seed=3)
    assert sub.val == carved.val and len(sub.train) == 8 and not set(sub.train) & set(sub.val)


def test_carve_validation_errors():
    task = _task("t", n=10)
    assert carve_validation(task, 0) is task
    for n, match in [(10, "n < 10"), (11, "n < 10"), (-1, "non-negative"), (1.5, "non-negative"),
                     (True, "non-negative"), (1, "fewer than two classes")]:  # fmt: skip
        with pytest.raises(CurloraError, match=match):
            carve_validation(task, n)
    skewed = _task("s", n=10, labels=(0,) * 9 + (1,))  # one example of class b
    with pytest.raises(CurloraError, match="fewer than two classes"):
        carve_validation(skewed, 9)  # would take the only b, leaving training with one class
    with pytest.raises(CurloraError, match="already has a validation split"):
        carve_validation(carve_validation(task, 4), 2)


def test_task_checks_val():
    with pytest.raises(CurloraError, match="val split has only one class"):
        Task("t", "single", ("a", "b"), [Example("x", 0), Example("y", 1)], [Example("z", 0), Example("w", 1)],
             val=[Example("v", 0)])  # fmt: skip
