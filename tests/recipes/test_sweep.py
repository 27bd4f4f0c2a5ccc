"""`curlora sweep` on a tiny model and a two-task generated suite: grid with two workers, Optuna with two workers on
SQLite, a SIGKILLed sweep resumed, noisy Pareto fronts on hand-made numbers, and bad inputs."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))  # the workers import `sweep_tiny.load` by name

import sweep_tiny  # noqa: E402

from curlora.cli import app  # noqa: E402
from curlora.errors import CurloraError  # noqa: E402
from curlora.recipes.sweep import Options, SweepReporter, dominates, front, make_space, parse_lrs, run_sweep  # noqa: E402
from curlora.recipes.sweep.pareto import compare, t975  # noqa: E402
from curlora.recipes.sweep.recommend import recommend  # noqa: E402
from curlora.recipes.sweep.runner import read_run, run_dir  # noqa: E402
from curlora.reports.sweep import write_report  # noqa: E402

SRC = str(Path(__file__).resolve().parents[2] / "src")


@contextlib.contextmanager
def one_thread_children():
    """Worker processes with one OpenMP thread each: two workers on a small CI machine otherwise oversubscribe it."""
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        os.environ.pop("OMP_NUM_THREADS") if saved is None else os.environ.__setitem__("OMP_NUM_THREADS", saved)


def tiny_space(**overrides):
    kw = dict(ranks=[2], lrs="1e-2", seeds=[0, 1], bench=dict(sweep_tiny.BENCH))
    return make_space(overrides.pop("methods", ["curlora"]), **{**kw, **overrides})


class Recorder(SweepReporter):
    def __init__(self):
        self.started_by, self.finished_runs = [], []

    def started(self, worker, label, seed):
        self.started_by.append(worker)

    def finished(self, worker, label, seed, metrics, cached):
        self.finished_runs.append((label, seed, cached))


def strict_json(path: Path) -> dict:
    def bad(token):
        raise AssertionError(f"{path} holds {token}")

    return json.loads(path.read_text(), parse_constant=bad)


def per_seed(results: dict) -> dict:
    return {(r["label"], r["seed"]): (r["avg_acc"], r["ppl_ratio"], r["forgetting"]) for r in results["runs"]}


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweeps") / "grid"
    rec = Recorder()
    with one_thread_children():
        results = run_sweep(tiny_space(), out, Options(jobs=2, device="cpu", loader=sweep_tiny.load), rec)
    return out, results, rec


# -- grid, outputs, resume --------------------------------------------------------------------------------------
def test_grid_with_two_workers_writes_every_run_and_the_outputs(grid):
    out, results, rec = grid
    labels = [c["label"] for c in results["configurations"]]
    assert labels == ["curlora-2:lr=0.01", "head_only:lr=0.001"]
    assert results["n_runs_done"] == results["n_runs_expected"] == 4
    assert sorted(set(rec.started_by)) == [0, 1]  # both workers ran points
    saved = strict_json(out / "results.json")
    assert saved["schema_version"] == 1 and saved["kind"] == "sweep" and saved["failures"] == []
    assert saved["wall_s"] > 0 and all(r["wall_s"] > 0 for r in saved["runs"])
    ref = next(r for r in saved["configurations"] if r["reference"])
    assert ref["learning"]["mean"] == 0.0 and ref["ppl_ratio"]["mean"] == pytest.approx(1.0, abs=1e-6)
    for row in saved["configurations"]:
        runs = [r for r in saved["runs"] if r["label"] == row["label"]]
        accs = [r["avg_acc"] for r in runs]
        assert row["avg_acc"]["mean"] == pytest.approx(sum(accs) / len(accs))
        assert row["front_ppl"] in (True, False) and (row["front_ppl"] == (row["dominated_by_ppl"] == []))
    assert (out / "base_ppl.json").exists()
    report = write_report(out)
    assert (out / "front-ppl.png").stat().st_size > 1000 and (out / "front-forgetting.png").stat().st_size > 1000
    assert "## Front: learning ↑ vs ppl ratio ↓" in report.read_text()


def test_rerun_redoes_nothing_and_another_space_is_refused(grid):
    out, results, _ = grid
    rec = Recorder()
    again = run_sweep(tiny_space(), out, Options(jobs=1, device="cpu", loader=sweep_tiny.load), rec)
    assert rec.finished_runs == []  # nothing left: no run even started
    assert per_seed(again) == per_seed(results)
    with pytest.raises(CurloraError, match=r"another space.*lrs: \[0\.01\] there, \[0\.001, 0\.003\] now"):
        run_sweep(tiny_space(lrs="1e-3,3e-3"), out, Options(device="cpu", loader=sweep_tiny.load))


def test_sigkilled_sweep_resumes_without_redoing_finished_runs(grid, tmp_path):
    out = tmp_path / "killed"
    script = tmp_path / "sweep.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import sweep_tiny
        from test_sweep import tiny_space
        from curlora.recipes.sweep import Options, run_sweep
        run_sweep(tiny_space(), {str(out)!r}, Options(jobs=1, device="cpu", loader=sweep_tiny.load))
    """))
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    confs = tiny_space().configurations()
    points = [(c, s) for c in confs for s in (0, 1)]
    deadline = time.time() + 120
    while sum(read_run(out, c, s) is not None for c, s in points) < 2:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {(c.label, s): (run_dir(out, c.label, s) / "results.json").stat().st_mtime_ns
                for c, s in points if read_run(out, c, s) is not None}
    assert 2 <= len(finished) < len(points)
    rec = Recorder()
    resumed = run_sweep(tiny_space(), out, Options(jobs=1, device="cpu", loader=sweep_tiny.load), rec)
    redone = {(label, seed) for label, seed, cached in rec.finished_runs if not cached}
    assert not redone & set(finished)
    assert redone | set(finished) == {(c.label, s) for c, s in points}
    for (label, seed), mtime in finished.items():
        assert (run_dir(out, label, seed) / "results.json").stat().st_mtime_ns == mtime
    expected, got = per_seed(grid[1]), per_seed(resumed)
    assert got.keys() == expected.keys()
    for key, values in expected.items():
        assert got[key] == pytest.approx(values, rel=1e-5, abs=1e-7), key


# -- optuna -----------------------------------------------------------------------------------------------------
def test_optuna_two_workers_share_one_sqlite_study(tmp_path):
    optuna = pytest.importorskip("optuna", reason="--search optuna needs optuna (pip install curlora[sweep])")
    out = tmp_path / "optuna"
    space = tiny_space(methods=["curlora", "lora"], seeds=[0])
    rec = Recorder()
    with one_thread_children():
        results = run_sweep(space, out, Options(jobs=2, device="cpu", search="optuna", trials=2,
                                                loader=sweep_tiny.load), rec)
    assert sorted(set(rec.started_by)) == [0, 1]
    assert (out / "optuna.db").exists()
    study = optuna.load_study(study_name="curlora-sweep", storage=f"sqlite:///{out / 'optuna.db'}")
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(done) >= 2
    sampled = {t.user_attrs["label"] for t in done}
    rows = {r["label"]: r for r in strict_json(out / "results.json")["configurations"]}
    assert sampled | {"head_only:lr=0.001"} == set(rows)
    for t in done:  # the trial's objective values are the sweep's own numbers for that configuration
        row = rows[t.user_attrs["label"]]
        assert t.values == pytest.approx([row["learning"]["mean"], row["ppl_ratio"]["mean"],
                                          row["forgetting"]["mean"]])
    assert results["search"]["search"] == "optuna" and results["search"]["trials"] == 2


# -- Pareto on hand-made numbers ----------------------------------------------------------------------------------
def test_t_quantiles():
    assert t975(1) == 12.706 and t975(2) == 4.303 and t975(30) == 2.042
    assert t975(60) == pytest.approx(2.000, abs=2e-3) and t975(1000) == pytest.approx(1.962, abs=2e-3)


def test_compare_pairs_seeds_and_respects_noise():
    # large spread between seeds, but a consistent paired gain of about +0.02: better (pairing removes the seed)
    a, b = {0: 0.52, 1: 0.71, 2: 0.33}, {0: 0.50, 1: 0.69, 2: 0.31}
    assert compare(a, b, True) == "better" and compare(b, a, True) == "worse"
    assert compare(a, b, False) == "worse"
    # the same means, paired differences +0.2, -0.1, +0.15: within the noise
    assert compare({0: 0.7, 1: 0.4, 2: 0.65}, {0: 0.5, 1: 0.5, 2: 0.5}, True) == "unclear"
    assert compare({0: 1.0, 1: 1.0}, {0: 1.0, 1: 1.0}, False) == "tie"
    assert compare({0: 0.6}, {0: 0.5}, True) == "better"  # one seed: the sign alone
    assert compare({0: 0.6}, {1: 0.5}, True) == "unclear"  # no shared seed


def test_dominance_and_fronts_with_ties_and_noise():
    hi = (True, False)  # learning up, perplexity ratio down

    def pt(learn, ratio):
        return [dict(enumerate(learn)), dict(enumerate(ratio))]

    good = pt([0.30, 0.32, 0.31], [1.010, 1.012, 1.011])
    worse = pt([0.10, 0.13, 0.11], [1.100, 1.120, 1.110])
    noisy = pt([0.50, 0.05, 0.40], [1.000, 1.030, 1.015])  # learns more on average, but inside the noise
    trade = pt([0.60, 0.61, 0.62], [1.300, 1.310, 1.305])  # learns most, costs most: its own corner of the front
    flat_a = pt([0.05, 0.06, 0.05], [1.0, 1.0, 1.0])  # head_only-like: ratio exactly 1
    flat_b = pt([0.01, 0.02, 0.01], [1.0, 1.0, 1.0])  # tied ratio, clearly less learning: dominated by flat_a
    assert dominates(good, worse, hi) and not dominates(worse, good, hi)
    assert not dominates(good, noisy, hi) and not dominates(noisy, good, hi)
    assert dominates(flat_a, flat_b, hi) and not dominates(flat_b, flat_a, hi)
    assert not dominates(good, good, hi)  # exact duplicates never dominate each other
    result = front({"good": good, "worse": worse, "noisy": noisy, "trade": trade, "flat_a": flat_a,
                    "flat_b": flat_b, "copy": good, "empty": [{}, {}]}, hi)
    on = sorted(k for k, v in result.items() if not v)
    assert on == ["copy", "flat_a", "good", "noisy", "trade"]
    assert sorted(result["worse"]) == ["copy", "good"] and result["flat_b"] == ["flat_a"]
    assert "empty" not in result


def test_recommend_picks_within_budget_and_names_the_closest_otherwise(grid):
    _, results, _ = grid
    fake = json.loads(json.dumps(results))
    rows = fake["configurations"]
    rows.append(json.loads(json.dumps(rows[0])) | {"label": "other"})
    for row, (learn, ratio) in zip(rows, [(0.10, 1.08), (0.0, 1.0), (0.05, 1.02)], strict=True):
        row["learning"]["mean"], row["ppl_ratio"]["mean"] = learn, ratio
    pick = recommend(fake, max_ppl_increase=0.05)
    assert pick["met"] and pick["best"]["label"] == "other"
    assert recommend(fake, max_ppl_increase=0.10)["best"]["label"] == rows[0]["label"]
    for row in rows:
        row["ppl_ratio"]["mean"] += 0.5
    miss = recommend(fake, max_ppl_increase=0.05)
    assert not miss["met"] and miss["best"]["label"] == rows[1]["label"]  # the smallest excess


def test_cli_recommend(grid):
    out, _, _ = grid
    result = CliRunner().invoke(app, ["sweep", "recommend", str(out), "--max-ppl-increase", "50%"])
    assert result.exit_code == 0, result.output
    assert "curlora bench --preset quick --methods" in result.output and "--seeds 0,1" in result.output
    result = CliRunner().invoke(app, ["sweep", "recommend", str(out), "--max-ppl-increase", "0%",
                                      "--max-forgetting", "-1"])
    assert result.exit_code == 2 and "must be >= 0" in result.output


# -- space and bad input ----------------------------------------------------------------------------------------
def test_space_from_options_and_toml(tmp_path):
    assert parse_lrs("1e-4:1e-2:5") == [1e-4, 3.16e-4, 1e-3, 3.16e-3, 1e-2]
    space = make_space(["curlora", "lora-4", "head_only"], ranks=[8, 16], lrs="1e-4,1e-3", samplings=["inverted",
                       "uniform"], seeds=[0, 1, 2])
    labels = [c.label for c in space.configurations()]
    assert len(labels) == 2 * 2 * 2 + 2 + 2  # curlora r×lr×sampling, lora-4 ×lr, head_only ×lr
    assert [c.label for c in space.configurations() if c.reference] == ["head_only:lr=0.001"]  # listed already
    assert "curlora-16:lr=0.0001,sampling=uniform" in labels and "lora-4:lr=0.001" in labels
    toml = tmp_path / "s.toml"
    toml.write_text('[space]\nmethods = ["curlora-8:sampling=uniform", "head_only"]\nlrs = "1e-4:1e-3:2"\n'
                    'epochs = [1, 2]\nseeds = [0]\n[bench]\npreset = "paper"\nsuite = "paper"\nwarmup_steps = 10\n')
    from curlora.recipes.sweep import load_space

    space = load_space(toml, seeds=[3])
    labels = [c.label for c in space.configurations()]
    assert "curlora-8:lr=0.0001,sampling=uniform epochs=2" in labels and space.seeds == [3]
    assert labels[-1] == "head_only:lr=0.00025 epochs=3"  # the paper preset's lr and epochs
    assert space.base_config().warmup_steps == 10 and space.base_config().warmup_ratio == 0.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(methods=["curlora", "dora"]), "unknown method 'dora"),
        (dict(methods=[]), "the space is empty"),
        (dict(methods=["curlora"], ranks=None), "needs a rank"),
        (dict(lrs="1e-2:1e-4:5"), "ends swapped; write 1e-4:1e-2:5"),
        (dict(lrs="0:1e-2:5"), "must be positive"),
        (dict(lrs="-1e-3"), "must be a positive number"),
        (dict(bench=dict(lr=1e-3)), "space-owned bench option"),
        (dict(bench=dict(nope=1)), "unknown or space-owned bench option"),
        (dict(methods=["curlora-2", "curlora"], ranks=[2]), "in the space twice"),
    ],
)
def test_bad_space(kwargs, message):
    with pytest.raises(CurloraError, match=message):
        tiny_space(**kwargs)


def test_bad_toml_keys(tmp_path):
    from curlora.recipes.sweep import load_space

    toml = tmp_path / "s.toml"
    toml.write_text('[space]\nmethods = ["head_only"]\nlearning_rates = [1e-3]\n')
    with pytest.raises(CurloraError, match="unknown key.*learning_rates"):
        load_space(toml)
    toml.write_text('[space]\nmethods = ["head_only"\n')
    with pytest.raises(CurloraError, match="not valid TOML"):
        load_space(toml)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(jobs=0), "--jobs must be >= 1"),
        (dict(search="optuna"), "needs --trials"),
        (dict(search="optuna", trials=2, storage="sqlite:////no/such/dir/x.db"), "cannot open the Optuna storage"),
        (dict(search="optuna", trials=2, storage="nosuchdb://host/db"), "cannot open the Optuna storage"),
        (dict(trials=3), "apply to --search optuna only"),
    ],
)
def test_bad_options_write_nothing(tmp_path, options, message):
    if "storage" in options:
        pytest.importorskip("optuna")
    out = tmp_path / "sweep"
    with pytest.raises(CurloraError, match=message):
        run_sweep(tiny_space(), out, Options(device="cpu", loader=sweep_tiny.load, **options))
    assert not out.exists()


def test_cli_bad_input_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["sweep", "--methods", "curlora", "--ranks", "2", "--lrs", "1e-2:1e-4:3",
                                      "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and "ends swapped" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "s").exists()
    result = CliRunner().invoke(app, ["sweep", "--methods", "head_only", "--jobs", "0", "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and "--jobs must be >= 1" in result.output
    assert not (tmp_path / "s").exists()


def test_paper_demo_space_file():
    from curlora.recipes.sweep import load_space

    space = load_space(Path(__file__).resolve().parents[2] / "configs" / "sweeps" / "paper-demo.toml")
    confs = space.configurations()
    assert len(confs) * len(space.seeds) == 168
    assert space.base_config().warmup_steps < 375  # the peak lr is reached within a task's 375 steps


def test_a_failing_run_is_listed_and_the_others_finish(tmp_path):
    out = tmp_path / "fails"
    space = tiny_space(methods=["curlora-999"], seeds=[0])  # rank larger than the tiny model: the bench refuses
    results = run_sweep(space, out, Options(device="cpu", loader=sweep_tiny.load))
    assert [f["label"] for f in results["failures"]] == ["curlora-999:lr=0.01"]
    assert "rank 999" in results["failures"][0]["error"]
    assert [r["label"] for r in results["runs"]] == ["head_only:lr=0.001"]
    from curlora.recipes.sweep import failure_message

    assert "1 run(s) failed" in failure_message(strict_json(out / "results.json"))


def test_plain_progress_prints_one_line_per_finished_run(capsys):
    from curlora.cli.sweep import LiveReporter

    rep = LiveReporter()
    assert not rep.live  # captured output is not a terminal
    rep.begin(3, 1)
    rep.started(0, "curlora-2:lr=0.01", 0)
    metrics = dict(avg_acc=0.75, ppl_ratio=1.01, forgetting=None, wall_s=12.0)
    rep.finished(0, "curlora-2:lr=0.01", 0, metrics, False)
    rep.end()
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["sweep: 3 runs, 1 finished already",
                     "[2/3] curlora-2:lr=0.01 seed 0: acc 0.750, ppl ratio 1.0100, forgetting —, 12 s"]


def test_workers_load_a_quantized_base_when_the_space_asks(monkeypatch):
    """A space with quantize=4bit loads its base through bitsandbytes on the worker's device (not the plain model)."""
    from curlora.recipes.sweep import runner

    seen = {}

    def fake_load(name, **kwargs):
        seen.update(kwargs, name=name)
        return "model", "tokenizer"

    monkeypatch.setattr(runner, "load_model", fake_load)
    monkeypatch.setattr(runner, "load_suite", lambda *a, **k: "suite")
    space = make_space(["curlora-2"], bench={"quantize": "4bit", "model": "smollm2-135m"})
    assert runner._load(space, None, "cpu") == ("model", "tokenizer", "suite")
    assert seen["quantize"] == "4bit" and str(seen["device"]) == "cpu"
    seen.clear()
    runner._load(make_space(["curlora-2"], bench={"model": "smollm2-135m"}), None, "cpu")
    assert "quantize" not in seen


def test_a_point_whose_results_file_is_corrupted_is_run_again_and_only_it(grid, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(grid[0], out)
    conf = tiny_space().configurations()[0]
    (run_dir(out, conf.label, 0) / "results.json").write_bytes(b"\xff\xfe\x00 not a results file")  # not UTF-8
    rec = Recorder()
    again = run_sweep(tiny_space(), out, Options(jobs=1, device="cpu", loader=sweep_tiny.load), rec)
    assert {(label, seed) for label, seed, cached in rec.finished_runs if not cached} == {(conf.label, 0)}
    expected, got = per_seed(grid[1]), per_seed(again)
    assert got.keys() == expected.keys()
    for key, values in expected.items():
        assert got[key] == pytest.approx(values, rel=1e-5, abs=1e-7), key
