import copy
import json

import pytest

from curlora.errors import CurloraError
from curlora.reports.bench import (
    PLOT_ACC_MATRIX,
    PLOT_ACC_PER_TASK,
    PLOT_PERPLEXITY,
    render_markdown,
    summary_rows,
    validate_results,
    write_report,
)

N = None
TASKS = ["movies", "source", "tweets"]


def _run(label, method, seed, acc, *, rank=16, ppl_after=20.2, wall_s=100.0, **extra):
    run = {
        "label": label,
        "method": method,
        "rank": rank,
        "sampling": "inverted" if method == "curlora" else None,
        "lr": 0.00025,
        "seed": seed,
        "acc": acc,
        "ppl_before": 20.0,
        "ppl_after": ppl_after,
        "delta_norm_ratio": {"mean": 0.001, "max": 0.004},
        "trainable_params": 23040,
        "head_params": 1154,
        "adapter_bytes": 98765,
        "wall_s": wall_s,
        "peak_lr": 0.00025,
        "stages": [
            {"task": TASKS[i], "train_loss": 0.5, "train_s": 30.0, "eval_s": 3.0, "steps": 100}
            for i in range(len(acc))
        ],
    }
    run.update(extra)
    return run


def make_results():
    runs = [
        _run("curlora-16", "curlora", 0, [[0.80, N, N], [0.78, 0.70, N], [0.76, 0.66, 0.74]], ppl_after=20.2),
        _run("lora-16", "lora", 0, [[0.80, N, N], [0.85, 0.75, N], [0.50, 0.55, 0.78]], ppl_after=25.0),
        _run(
            "curlora-16",
            "curlora",
            1,
            [[0.84, N, N], [0.80, 0.72, N], [0.78, 0.68, 0.76]],
            ppl_after=20.6,
            wall_s=110.0,
            delta_norm_ratio={"mean": 0.002, "max": 0.004},
        ),
        _run("lora-16", "lora", 1, [[0.80, N, N], [0.81, 0.73, N], [0.54, 0.57, 0.80]], ppl_after=27.0),
        _run(
            "head_only",
            "head_only",
            0,
            [[0.70, N, N], [0.70, 0.60, N], [0.70, 0.60, 0.65]],
            rank=None,
            ppl_after=20.0,
            delta_norm_ratio=None,
            adapter_bytes=None,
            trainable_params=0,
        ),
        # interrupted after two of the three tasks
        _run("full", "full", 0, [[0.85, N, N], [0.40, 0.88, N]], rank=None, ppl_after=None, wall_s=50.0),
    ]
    return {
        "schema_version": 1,
        "created": "2025-01-01T00:00:00+00:00",
        "config": {"preset": "quick", "model": "tiny-llama", "epochs": 1, "methods": ["curlora", "lora"]},
        "environment": {"device_name": "CPU (2 cores)", "torch": "2.13.0", "python": "3.12"},
        "suite": {
            "name": "builtin",
            "tasks": TASKS,
            "ppl_name": "nyt-editorials",
            "notes": ["synthetic numbers for a test"],
        },
        "runs": runs,
    }


def _line(md, start):
    hits = [line for line in md.splitlines() if line.startswith(start)]
    assert len(hits) == 1, (start, hits)
    return [c.strip() for c in hits[0].strip("|").split("|")]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    (run_dir / "results.json").write_text(json.dumps(make_results()))
    path = write_report(run_dir)
    return run_dir, path, path.read_text()


def test_write_report_files(report):
    run_dir, path, _ = report
    assert path == run_dir / "report.md"
    for name in (PLOT_ACC_MATRIX, PLOT_ACC_PER_TASK, PLOT_PERPLEXITY):
        data = (run_dir / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        assert len(data) > 5000, name
    assert not list(run_dir.glob("*.tmp")) and not list(run_dir.glob(".*.tmp"))


def test_header(report):
    md = report[2]
    assert "- **Model:** tiny-llama" in md
    assert "builtin (movies → source → tweets); perplexity text: nyt-editorials" in md
    assert "- **Preset:** quick" in md
    assert "- **Device:** CPU (2 cores)" in md
    assert "- **Seeds:** 0, 1" in md
    # 100 + 100 + 110 + 100 + 100 + 50 = 560 s
    assert "- **Total wall time:** 9.3 min" in md
    assert "- synthetic numbers for a test" in md
    for plot in (PLOT_ACC_MATRIX, PLOT_ACC_PER_TASK, PLOT_PERPLEXITY):
        assert f"]({plot})" in md


def test_stage_table(report):
    md = report[2]
    assert _line(md, "| Stage: task |") == ["Stage: task", "curlora-16", "lora-16", "head_only", "full"]
    # curlora movies after movies: 0.80, 0.84 -> 0.82, sd = 0.04/sqrt(2) = 0.028
    assert _line(md, "| after movies: movies |")[1:] == ["0.82 ± 0.03", "0.80 ± 0.00", "0.70", "0.85"]
    # lora movies after source: 0.85, 0.81 -> 0.83 ± 0.028; curlora: 0.78, 0.80 -> 0.79 ± 0.014
    assert _line(md, "| after source: movies |")[1:] == ["0.79 ± 0.01", "0.83 ± 0.03", "0.70", "0.40"]
    # the interrupted run has no third stage
    assert _line(md, "| after tweets: movies |")[1:] == ["0.77 ± 0.01", "0.52 ± 0.03", "0.70", "—"]
    assert _line(md, "| perplexity before |")[1:] == ["20.00 ± 0.00", "20.00 ± 0.00", "20.00", "20.00"]
    # curlora 20.2, 20.6 -> 20.40 ± 0.28; lora 25, 27 -> 26.00 ± 1.41
    assert _line(md, "| perplexity after |")[1:] == ["20.40 ± 0.28", "26.00 ± 1.41", "20.00", "—"]


def test_metrics_table(report):
    md = report[2]
    header = _line(md, "| Method |")
    cur = dict(zip(header, _line(md, "| curlora-16 |"), strict=True))
    # avg acc: seed 0 (0.76+0.66+0.74)/3 = 0.72, seed 1 (0.78+0.68+0.76)/3 = 0.74 -> 0.73 ± 0.014
    assert cur["Avg acc"] == "0.73 ± 0.01"
    # BWT: seed 0 ((0.76-0.80)+(0.66-0.70))/2 = -0.04, seed 1 ((0.78-0.84)+(0.68-0.72))/2 = -0.05
    assert cur["BWT"] == "-0.045 ± 0.007"
    # forgetting: seed 0 (0.04+0.04)/2 = 0.04, seed 1 ((0.84-0.78)+(0.72-0.68))/2 = 0.05
    assert cur["Forgetting"] == "0.045 ± 0.007"
    assert cur["PPL before"] == "20.00 ± 0.00"
    assert cur["PPL after"] == "20.40 ± 0.28"
    # ratios 1.01, 1.03 -> 1.02 ± 0.014
    assert cur["PPL after/before"] == "1.02 ± 0.01"
    # 0.001, 0.002 -> 0.0015 ± 0.00071; max 0.004 twice
    assert cur["‖ΔW‖/‖W‖ mean"] == "0.0015 ± 0.00071"
    assert cur["‖ΔW‖/‖W‖ max"] == "0.004 ± 0"
    assert cur["Trainable params"] == "23,040"
    assert cur["Head params"] == "1,154"
    assert cur["Adapter size"] == "96.5 KiB"  # 98765 / 1024
    assert cur["Wall time"] == "105.0 s ± 7.1 s"
    assert cur["Peak LR"] == "2.50e-04"
    assert cur["Seeds"] == "2"

    lora = dict(zip(header, _line(md, "| lora-16 |"), strict=True))
    # forgetting != -BWT: task 0 peaked after stage 1 (0.85 / 0.81), not on the diagonal
    # BWT: seed 0 (-0.30-0.20)/2 = -0.25, seed 1 (-0.26-0.16)/2 = -0.21 -> -0.230 ± 0.028
    assert lora["BWT"] == "-0.230 ± 0.028"
    # forgetting: seed 0 ((0.85-0.50)+(0.75-0.55))/2 = 0.275, seed 1 ((0.81-0.54)+(0.73-0.57))/2 = 0.215
    assert lora["Forgetting"] == "0.245 ± 0.042"
    # avg acc: 1.83/3 = 0.61, 1.91/3 = 0.6367 -> 0.62 ± 0.019
    assert lora["Avg acc"] == "0.62 ± 0.02"

    full = dict(zip(header, _line(md, "| full |"), strict=True))
    assert full["Seeds"] == "1 (1 incomplete)"
    assert full["Avg acc"] == full["BWT"] == full["PPL after"] == full["Wall time"] == "—"
    assert full["PPL before"] == "20.00"


def test_single_seed_label_has_no_pm(report):
    md = report[2]
    head = _line(md, "| head_only |")
    assert not any("±" in c for c in head)
    assert head[2:5] == ["0.65", "0.000", "0.000"]  # avg (0.70+0.60+0.65)/3, BWT, forgetting
    assert "**head_only** (1 seed)" in md
    assert "**full** (1 seed, 1 incomplete)" in md


def test_incomplete_run_is_marked(report):
    md = report[2]
    assert "`full` seed 0: 2 of 3 tasks finished" in md
    # its accuracy matrix shows the two finished stages and a dash for the missing one
    assert _line(md, "| after source | 0.40") == ["after source", "0.40", "0.88", ""]
    assert "| after tweets | — | — | — |" in md


def test_partial_seed_marks_cells():
    results = make_results()
    results["runs"].append(_run("curlora-16", "curlora", 2, [[0.81, N, N]], ppl_after=None))
    md = render_markdown(results)
    # stage 0 has all three seeds: 0.80, 0.84, 0.81 -> 0.8167 ± 0.0208
    assert _line(md, "| after movies: movies |")[1] == "0.82 ± 0.02"
    # later stages only from two of three seeds
    assert _line(md, "| after source: movies |")[1] == "0.79 ± 0.01*"
    row = next(r for r in summary_rows(results) if r["label"] == "curlora-16")
    assert (row["n_seeds"], row["n_complete"], row["incomplete"]) == (3, 2, True)
    assert row["text"]["Seeds"] == "3 (1 incomplete)"
    assert row["avg_acc"]["n"] == 2  # end-of-run metrics from complete runs only
    assert row["avg_acc"]["mean"] == pytest.approx(0.73)


def test_complete_false_flag_marks_run_incomplete():
    results = make_results()
    results["runs"][4]["complete"] = False  # head_only: all three stages, but the run did not finish
    results["runs"][0]["complete"] = True
    md = render_markdown(results)
    assert "`head_only` seed 0: 3 of 3 tasks finished (run not finished)" in md
    head = next(r for r in summary_rows(results) if r["label"] == "head_only")
    assert head["incomplete"] and head["text"]["Avg acc"] == "—"
    assert _line(md, "| after tweets: tweets |")[3] == "0.65"  # its accuracies are still shown


def test_summary_rows_order_and_numbers():
    rows = summary_rows(make_results())
    assert [r["label"] for r in rows] == ["curlora-16", "lora-16", "head_only", "full"]
    cur = rows[0]
    assert cur["method"] == "curlora" and cur["rank"] == 16 and cur["sampling"] == "inverted"
    assert cur["seeds"] == [0, 1]
    assert cur["bwt"]["mean"] == pytest.approx(-0.045)
    assert cur["bwt"]["sd"] == pytest.approx(0.01 / 2**0.5)
    assert rows[2]["avg_acc"]["sd"] is None
    assert list(cur["text"])[:3] == ["Method", "Seeds", "Avg acc"]


def test_render_is_deterministic(report):
    results = make_results()
    assert render_markdown(results) == render_markdown(copy.deepcopy(results))
    assert render_markdown(results) == report[2]


def test_log_scale_perplexity_and_no_runs(tmp_path):
    results = make_results()
    results["runs"][-1]["ppl_after"] = 5000.0
    results["runs"][-1]["acc"].append([0.1, 0.1, 0.9])
    (tmp_path / "results.json").write_text(json.dumps(results))
    md = write_report(tmp_path / "results.json").read_text()
    assert _line(md, "| perplexity after |")[-1] == "5000.0"
    assert (tmp_path / PLOT_PERPLEXITY).stat().st_size > 5000

    empty = {"schema_version": 1, "runs": []}
    md = render_markdown(empty)
    assert "No runs recorded yet." in md
    assert summary_rows(empty) == []


def test_malformed_json(tmp_path):
    (tmp_path / "results.json").write_text('{"schema_version": 1, "runs": [')
    with pytest.raises(CurloraError) as info:
        write_report(tmp_path)
    assert "results.json" in str(info.value) and "not valid JSON" in str(info.value)
    assert not (tmp_path / "report.md").exists()


def test_missing_results(tmp_path):
    with pytest.raises(CurloraError, match="not found"):
        write_report(tmp_path)


def test_wrong_schema_version(tmp_path):
    results = make_results()
    results["schema_version"] = 2
    (tmp_path / "results.json").write_text(json.dumps(results))
    with pytest.raises(CurloraError, match="schema_version"):
        write_report(tmp_path)


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda r: r.pop("runs"), "'runs'"),
        (lambda r: r["runs"][0].pop("label"), "label"),
        (lambda r: r["runs"][0]["acc"][0].__setitem__(1, 0.5), "above the diagonal"),
        (lambda r: r["runs"][0]["acc"][1].__setitem__(0, None), "acc[1][0]"),
        (lambda r: r["runs"][0]["acc"][0].append(None), "larger than"),
        (lambda r: r["runs"][0].__setitem__("wall_s", "fast"), "wall_s"),
        (lambda r: r["suite"].__setitem__("tasks", "movies"), "suite.tasks"),
        (lambda r: r["runs"][0].__setitem__("complete", "yes"), "'complete'"),
    ],
)
def test_invalid_results(mutate, fragment):
    results = make_results()
    mutate(results)
    with pytest.raises(CurloraError) as info:
        validate_results(results, source="x/results.json")
    assert fragment in str(info.value) and "x/results.json" in str(info.value)


def test_perplexity_details_in_header():
    results = make_results()
    results["suite"].update(ppl_tokens=40960, ppl_max_length=1024, ppl_stride=512)
    md = render_markdown(results)
    assert "perplexity text: nyt-editorials (tokens 40,960, window 1,024, stride 512)" in md


def test_tasks_inferred_without_suite():
    results = make_results()
    del results["suite"]
    md = render_markdown(results)
    assert "| after tweets: source |" in md
