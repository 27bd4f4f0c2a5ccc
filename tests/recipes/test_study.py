"""`curlora study`: a design run as one sweep per setting, gathered into one results.json the report reads."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the workers import `sweep_tiny.load` by name
import sweep_tiny  # noqa: E402

from curlora.errors import CurloraError  # noqa: E402
from curlora.methods import spec_family as family  # noqa: E402
from curlora.recipes.study import collect_study, load_design, run_study  # noqa: E402
from curlora.recipes.sweep import Options  # noqa: E402
from curlora.reports.continual import analyse, validate_study  # noqa: E402

DESIGN = """
[study]
title = "tiny study"
reference = "probe"
comparisons = [["curlora-2", "head_only"]]

[space]
methods = ["curlora-2", "head_only", "probe"]
lrs = [1e-3, 1e-2]
seeds = [0, 1]
epochs = [1]

[bench]
{bench}
n_val = 2
head_lr = 1e-2
kl_max_tokens = 32

[[setting]]
name = "forward"
group = "main"
title = "polar then topic"
task_order = ["polar", "topic"]

[[setting]]
name = "backward"
group = "main"
title = "topic then polar"
task_order = ["topic", "polar"]
"""


def _design(tmp_path, **replace) -> Path:
    bench = "\n".join(f"{k} = {json.dumps(v)}" for k, v in (sweep_tiny.BENCH | {"n_train": 6}).items())
    text = DESIGN.replace("{bench}", bench)
    for old, new in replace.items():
        text = text.replace(old, new)
    path = tmp_path / "design.toml"
    path.write_text(text)
    return path


def test_family_drops_only_the_lr():
    assert family("lora-1:lr=0.001,targets=v_proj") == "lora-1:targets=v_proj"
    assert family("curlora-16:lr=0.00025") == "curlora-16" and family("probe") == "probe"


def test_study_runs_every_setting_and_gathers_one_results_file(tmp_path):
    design = load_design(_design(tmp_path))
    out = tmp_path / "study"
    results = run_study(design, out, Options(jobs=1, device="cpu", loader=sweep_tiny.load))
    assert json.loads((out / "results.json").read_text()) == results
    validate_study(results)  # the report's own check of the contract, predictions against accuracies included
    # curlora at 2 lrs, head_only once (its heads learn at their own rate), probe once: 4 configurations x 2 seeds
    for setting in results["settings"]:
        assert setting["n_runs_expected"] == 8 == len(setting["runs"])
        assert {r["family"] for r in setting["runs"]} == {"curlora-2", "head_only", "probe"}
        assert setting["suite"]["task_info"][0]["n_val"] == 2
        assert all(r["val_acc"] and r["pred"] and r["kl"] is not None for r in setting["runs"])
    assert [s["order"] for s in results["settings"]] == [["polar", "topic"], ["topic", "polar"]]
    analysis = analyse(results, n_boot=50)
    assert analysis  # the analysis runs on what the bench wrote
    # a rerun finds every run finished and gives the same records
    again = collect_study(design, out)
    assert [s["runs"] for s in again["settings"]] == [s["runs"] for s in results["settings"]]


def test_bad_designs(tmp_path):
    with pytest.raises(CurloraError, match="not a method family"):
        load_design(_design(tmp_path, **{'[["curlora-2", "head_only"]]': '[["curlora-4", "head_only"]]'}))
    with pytest.raises(CurloraError, match="used twice"):
        load_design(_design(tmp_path, **{'name = "backward"': 'name = "forward"'}))
    with pytest.raises(CurloraError, match="unknown key"):
        load_design(_design(tmp_path, **{'title = "tiny study"': 'titel = "tiny study"'}))
    design = load_design(_design(tmp_path, **{'["topic", "polar"]': '["topic", "nope"]'}))
    with pytest.raises(CurloraError, match="nope"):
        run_study(design, tmp_path / "bad", Options(jobs=1, device="cpu", loader=sweep_tiny.load))
    assert not (tmp_path / "bad").exists()  # refused before the first setting ran
    with pytest.raises(CurloraError, match="unknown setting"):
        run_study(load_design(_design(tmp_path)), tmp_path / "bad", Options(loader=sweep_tiny.load), only=["x"])


def _part(file, runs, bench=None, methods=("curlora-2",)):
    setting = {"name": "s", "group": "main", "order": ["a", "b"], "bench": bench or {"n_train": 6},
               "n_runs_expected": len(runs), "runs": runs, "suite": {}}
    return {"kind": "study", "schema_version": 1, "commit": file, "created": "t",
            "design": {"file": file, "methods": list(methods), "lrs": None, "comparisons": [], "notes": [],
                       "settings_compared": []},
            "settings": [setting]}


def test_merge_unites_runs_checks_settings_and_reports_duplicates():
    from curlora.recipes.study import merge_studies

    run = {"label": "head_only:lr=0.001", "seed": 0, "acc": [[0.5], [0.5, 0.75]]}
    twin = {**run, "acc": [[0.5], [0.5, 0.70]]}
    extra = {"label": "lora-2:lr=0.001,head_init=probe", "seed": 0, "acc": [[0.6], [0.6, 0.8]]}
    merged = merge_studies([_part("a.toml", [run]), _part("b.toml", [twin, extra], methods=("lora-2",))])
    (setting,) = merged["settings"]
    assert [r["label"] for r in setting["runs"]] == ["head_only:lr=0.001", "lora-2:lr=0.001,head_init=probe"]
    assert setting["runs"][0]["acc"] == run["acc"]  # the first file's copy is kept
    assert merged["duplicates"]["head_only:lr=0.001"] == {"runs": 1, "max_final_acc_diff": pytest.approx(0.05)}
    assert merged["design"]["methods"] == ["curlora-2", "lora-2"] and merged["commit"] == "a.toml, b.toml"
    with pytest.raises(CurloraError, match="differs in: n_train"):
        merge_studies([_part("a", [run]), _part("b", [run], bench={"n_train": 8})])
    with pytest.raises(CurloraError, match="not a study results file"):
        merge_studies([_part("a", [run]), {"kind": "sweep"}])
    with pytest.raises(CurloraError, match="at least two"):
        merge_studies([_part("a", [run])])
