"""The second-edition study analysis and report (curlora.reports.continual, continual_report, stats) on synthetic
data from tests/reports/study_data.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from study_data import make_study
from typer.testing import CliRunner

from curlora.errors import CurloraError
from curlora.metrics import forgetting
from curlora.reports.continual import analyse, flat_values, load_study, pred_accuracy, validate_study
from curlora.reports.continual_report import build_report, fill_template, render_report, write_report2
from curlora.reports.stats import INDISTINGUISHABLE, bootstrap_diff_interval, paired_stats, t975, verdict

ROOT = Path(__file__).resolve().parents[2]
STUDY2 = ROOT / "docs" / "study2"
QUANTIZED = ROOT / "docs" / "quantized"
# the 4-bit study appears in docs/REPORT.md as a companion section (`make report`, docs/STUDY.md)
COMPANIONS = [(QUANTIZED, QUANTIZED / "report.md")]

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def analysed():
    results = make_study()
    return results, analyse(results, n_boot=400)


def _group(analysis, name="main"):
    return next(g for g in analysis["groups"] if g["name"] == name)


def _cmp(group, a, b):
    return next(c for c in group["comparisons"] if (c["a"], c["b"]) == (a, b))


def test_clearly_better_method_beats_the_other(analysed):
    _, analysis = analysed
    c = _cmp(_group(analysis), "curlora-16", "lora-16")
    assert c["metrics"]["acc"]["verdict"] == "curlora-16 beats lora-16"
    # lower forgetting is better: the direction is the metric's
    assert c["metrics"]["forgetting"]["verdict"] == "curlora-16 beats lora-16"
    assert c["metrics"]["acc"]["n"] == 15 and c["metrics"]["acc"]["low"] > 0
    low, high = c["metrics"]["acc"]["boot_low"], c["metrics"]["acc"]["boot_high"]
    assert low < c["metrics"]["acc"]["mean"] < high
    assert _cmp(_group(analysis, "paper"), "curlora-16", "lora-16")["metrics"]["acc"]["n"] == 5


def test_identical_methods_are_indistinguishable():
    analysis = analyse(make_study(clone={"lora-16": "curlora-16"}), n_boot=200)
    c = _cmp(_group(analysis), "curlora-16", "lora-16")
    for key in ("acc", "forgetting", "ppl", "kl"):
        assert c["metrics"][key]["verdict"] == INDISTINGUISHABLE
        assert c["metrics"][key]["mean"] == 0
    assert c["metrics"]["acc"]["boot_low"] == pytest.approx(0, abs=1e-12) == c["metrics"]["acc"]["boot_high"]


def test_selection_uses_validation_even_when_test_prefers_another_lr():
    # at lr 1e-3 curlora looks better on validation but is worse on test than at 2.5e-4
    results = make_study(lr_effects={("curlora-16", 0.001): (-0.08, 0.05)})
    analysis = analyse(results, n_boot=50)
    sel = next(s for s in _group(analysis)["selection"] if s["family"] == "curlora-16")
    by_lr = {c["lr"]: c for c in sel["candidates"]}
    assert by_lr[0.00025]["test_acc"] > by_lr[0.001]["test_acc"]
    assert by_lr[0.001]["val_acc"] > by_lr[0.00025]["val_acc"]
    assert sel["lr"] == 0.001
    fam = _group(analysis)["families"]["curlora-16"]
    assert fam["acc"]["mean"] == pytest.approx(by_lr[0.001]["test_acc"])


def test_accuracy_recomputed_from_predictions_equals_stored_acc(study):
    for s in study["settings"]:
        labels = {t["name"]: t["eval_labels"] for t in s["suite"]["task_info"]}
        for run in s["runs"]:
            for i, row in enumerate(run["acc"]):
                for j in range(i + 1):
                    assert pred_accuracy(run["pred"][i][j], labels[s["order"][j]]) == pytest.approx(row[j], abs=1e-12)
    run = study["settings"][0]["runs"][0]
    run["acc"][0][0] += 0.05
    with pytest.raises(CurloraError, match=r"acc\[0\]\[0\].*predictions give"):
        validate_study(study)


def test_bootstrap_is_deterministic_and_percentile_based():
    a = [{"t": [True] * 60 + [False] * 40}, {"t": [True] * 70 + [False] * 30}]
    b = [{"t": [True] * 50 + [False] * 50}, {"t": [True] * 50 + [False] * 50}]
    first = bootstrap_diff_interval(a, b, n_boot=500, seed=3)
    assert first == bootstrap_diff_interval(a, b, n_boot=500, seed=3)
    assert first != bootstrap_diff_interval(a, b, n_boot=500, seed=4)
    assert first[0] < 0.15 < first[1]


def test_analysis_is_deterministic(analysed):
    results, analysis = analysed
    assert flat_values(analyse(results, n_boot=400)) == flat_values(analysis)


def test_diverged_run_is_excluded_and_listed(tmp_path):
    results = make_study()
    run = next(r for r in results["settings"][1]["runs"] if r["family"] == "curlora-16" and r["lr"] == 0.001)
    run["diverged"], run["ppl_after"] = True, float("nan")
    analysis = analyse(results, n_boot=50)
    g = _group(analysis)
    assert g["diverged"] == [{"setting": "order-b", "label": run["label"], "seed": run["seed"],
                              "reason": "diverged during training"}]
    assert g["families"]["curlora-16"]["acc"]["n"] == 14
    assert _cmp(g, "curlora-16", "lora-16")["metrics"]["acc"]["n"] == 14
    text = render_report(analysis, "x")
    assert "### Diverged runs" in text and f"| order-b | {run['label']} | {run['seed']} | diverged" in text


def test_per_task_forgetting_averages_to_the_bench_definition(analysed):
    results, analysis = analysed
    g = _group(analysis)
    fam = g["families"]["lora-16"]
    runs = [r for s in results["settings"] if s["group"] == "main" for r in s["runs"]
            if r["family"] == "lora-16" and r["lr"] == 0.001]
    assert fam["forgetting"]["mean"] == pytest.approx(sum(forgetting(r["acc"]) for r in runs) / len(runs))
    probe = g["families"]["probe"]
    assert all(t["relforg"] is None for t in probe["tasks"].values())  # no gain over itself


def test_report_numbers_match_an_independent_computation(write_study, tmp_path):
    results = make_study()
    folder = write_study(results)
    out = tmp_path / "docs" / "REPORT.md"
    out.parent.mkdir()
    write_report2(folder, out)
    text = out.read_text()
    probe_runs = [r for s in results["settings"] if s["group"] == "main" for r in s["runs"] if r["family"] == "probe"]
    mean = sum(sum(r["acc"][-1]) / len(r["acc"][-1]) for r in probe_runs) / len(probe_runs)
    assert f"probe: {mean:.3f}." in text
    assert "(curlora-16 beats lora-16)" in text
    assert "](../study2/main_pareto.png)" in text and (folder / "main_pareto.png").stat().st_size > 1000
    assert (folder / "paper_pareto.png").exists()
    # the same inputs give the same text
    assert build_report(folder, out, write_plots=False) == text


def test_unknown_placeholder_names_it_and_close_keys(analysed):
    _, analysis = analysed
    values = flat_values(analysis)
    with pytest.raises(CurloraError, match=r"\{\{main\.family\.curlora-16\.acc\.mea\}\}.*main\.family\.curlora-16"):
        fill_template("{{main.family.curlora-16.acc.mea}}", values)
    assert fill_template("{{ main.units }} units", values) == "15 units"


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda r: r.update(kind="bench"), "not a study results file"),
        (lambda r: r.update(schema_version=2), "schema_version"),
        (lambda r: r["design"]["comparisons"].append(["curlora-16", "dora-8"]), "unknown families.*dora-8"),
        (lambda r: r["settings"][0]["runs"][0].pop("val_acc"), "lacks val_acc"),
        (lambda r: r["design"].update(reference="nope"), "design.reference"),
    ],
)
def test_bad_input_is_one_clear_error(write_study, edit, match):
    results = make_study(seeds=(0,))
    edit(results)
    with pytest.raises(CurloraError, match=match):
        load_study(write_study(results))


def test_missing_findings_is_a_clear_error(write_study, tmp_path):
    folder = write_study(make_study(seeds=(0, 1)))
    (folder / "findings.md").unlink()
    with pytest.raises(CurloraError, match="findings.md"):
        build_report(folder, tmp_path / "REPORT.md", write_plots=False)


def test_paired_stats_and_verdicts():
    st = paired_stats([0.18, 0.2, 0.22])
    half = t975(2) * 0.02 / math.sqrt(3)
    assert st["mean"] == pytest.approx(0.2) and st["low"] == pytest.approx(0.2 - half)
    assert verdict("a", "b", st, True) == "a beats b" and verdict("a", "b", st, False) == "b beats a"
    assert verdict("a", "b", paired_stats([0.1]), True) == INDISTINGUISHABLE
    assert verdict("a", "b", paired_stats([-0.1, 0.1, 0.05]), True) == INDISTINGUISHABLE


def test_lora_scaling_statement_matches_the_code():
    from curlora.methods import lora_config

    cfg = lora_config(8, 2.0, target_modules=["q_proj"])
    assert cfg.lora_alpha == 2.0 * 8  # PEFT scales by lora_alpha / r = α: "lora_alpha = α·r", no division by r


def test_cli_study_report(write_study, tmp_path):
    from curlora.cli import app

    folder = write_study(make_study(seeds=(0, 1)))
    out = tmp_path / "REPORT.md"
    result = CliRunner().invoke(app, ["study", "report", str(folder), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("# Synthetic study")
    bad = write_study({"kind": "bench"})
    result = CliRunner().invoke(app, ["study", "report", str(bad), "--out", str(out)])
    assert result.exit_code == 2 and "not a study results file" in result.output


def test_committed_report_matches_docs_study2():
    if not (STUDY2 / "results.json").exists():
        pytest.skip(f"{STUDY2 / 'results.json'} does not exist yet (the second-edition study has not run)")
    expected = (ROOT / "docs" / "REPORT.md").read_text(encoding="utf-8")
    assert build_report(STUDY2, ROOT / "docs" / "REPORT.md", write_plots=False, companions=COMPANIONS) == expected, (
        "docs/REPORT.md is stale: run `make report`")


def test_committed_quantized_report_matches_its_results():
    expected = (QUANTIZED / "report.md").read_text(encoding="utf-8")
    assert build_report(QUANTIZED, QUANTIZED / "report.md", write_plots=False) == expected, (
        "docs/quantized/report.md is stale: run `make report`")
    assert "## Companion study: CURLoRA and LoRA on a 4-bit base" in (ROOT / "docs" / "REPORT.md").read_text()


def _study_folder(path: Path, findings: str) -> Path:
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps(make_study()))
    (path / "findings.md").write_text(findings)
    return path


def test_companion_section_and_its_bad_inputs(tmp_path):
    from curlora.cli import app

    main = _study_folder(tmp_path / "main", "Main findings.\n")
    other = _study_folder(tmp_path / "other", "Companion says {{main.family.curlora-16.acc.mean}}.\n")
    out = tmp_path / "docs" / "REPORT.md"
    text = build_report(main, out, write_plots=False, companions=[(other, other / "full.md")])
    section = text[text.index("## Companion study: "):]
    acc = flat_values(analyse(load_study(other)))["main.family.curlora-16.acc.mean"]
    assert f"Companion says {acc}." in section and "([full report](../other/full.md))" in section
    assert text.startswith(build_report(main, out, write_plots=False))  # the main report is unchanged above it
    # a companion that is not a study: one clear error, and nothing written
    with pytest.raises(CurloraError, match="results.json"):
        write_report2(main, out, companions=[(tmp_path / "nowhere", tmp_path / "x.md")])
    assert not out.exists()
    result = CliRunner().invoke(app, ["study", "report", str(main), "--out", str(out), "--companion", str(other)])
    assert result.exit_code == 2 and "DIR=REPORT" in result.output and not out.exists()


def test_results_survive_json_round_trip(study):
    validate_study(json.loads(json.dumps(study)))


def test_committed_findings_template_uses_known_keys(analysed):
    # before the study has results, the template must at least fill from a synthetic study of the same design
    if (STUDY2 / "results.json").exists():
        pytest.skip("the committed results exist: test_committed_report_matches_docs_study2 renders the template")
    _, analysis = analysed
    fill_template((STUDY2 / "findings.md").read_text(encoding="utf-8"), flat_values(analysis))


def test_settings_compared_pairs_families_by_seed_and_lr():
    """design.settings_compared (e.g. a 4-bit base against bf16): a setting against a copy of itself differs by zero;
    against a setting whose accuracies are all lower, the verdict says so."""
    import copy

    study = make_study()
    same = copy.deepcopy(next(s for s in study["settings"] if s["name"] == "order-a"))
    same.update(name="copy", group="copy")
    worse = copy.deepcopy(same)
    worse.update(name="worse", group="worse")
    for run in worse["runs"]:  # every prediction of the last task wrong: final accuracy strictly lower
        labels = next(t for t in worse["suite"]["task_info"] if t["name"] == worse["order"][-1])["eval_labels"]
        wrong = "".join("1" if y == "0" else "0" for y in labels)
        run["pred"][-1][-1] = wrong
        run["acc"][-1][-1] = pred_accuracy(wrong, labels)
    study["settings"] += [same, worse]
    study["design"]["settings"] += [{"name": "copy", "group": "copy", "order": same["order"]},
                                    {"name": "worse", "group": "worse", "order": same["order"]}]
    study["design"]["settings_compared"] = [["copy", "order-a"], ["worse", "order-a"]]
    analysis = analyse(study, n_boot=20)
    rows = analysis["settings_compared"]
    copies = [r for r in rows if r["a"] == "copy"]
    assert {r["family"] for r in copies} == {"curlora-16", "lora-16", "lora-1:targets=v_proj", "head_only", "probe"}
    assert all(r["metrics"]["acc"]["mean"] == 0 and r["metrics"]["acc"]["n"] == 5 for r in copies)
    worse_rows = [r for r in rows if r["a"] == "worse"]
    assert all(r["metrics"]["acc"]["verdict"] == "order-a beats worse" for r in worse_rows)
    values = flat_values(analysis)
    assert values["set.worse.vs.order-a.curlora-16.lr.0.001.acc.verdict"] == "order-a beats worse"
    assert "## Settings compared" in render_report(analysis, "x")
