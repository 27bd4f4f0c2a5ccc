"""`curlora study`: a design run as one sweep per setting, gathered into one results.json the report reads."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the workers import `sweep_tiny.load` by name
import sweep_tiny  # noqa: E402

from curlora.errors import CurloraError  # noqa: E402
from curlora.recipes.study import collect_study, family, load_design, run_study  # noqa: E402
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
