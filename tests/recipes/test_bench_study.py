"""The bench features the second-edition study stands on: task order, validation rows, stored predictions, the
linear probe, KL to the base, and per-method target modules."""

import pytest
from test_bench import CONFIG, run_bench, synthetic_suite

from curlora.errors import CurloraError
from curlora.methods import parse_method
from curlora.recipes.bench import make_config
from curlora.testing import tiny_llama

STUDY_RUN = dict(
    methods=["curlora-2", "head_only", "probe", "full"], task_order=["topic", "polar"], n_val=6, kl_max_tokens=128
)


def test_order_validation_predictions_probe_and_kl(tmp_path):
    results, out = run_bench(tmp_path, **STUDY_RUN)
    assert results["suite"]["tasks"] == ["topic", "polar"]
    info = {t["name"]: t for t in results["suite"]["task_info"]}
    assert info["topic"]["n_val"] == 6
    assert info["topic"]["n_train_pool"] == len(synthetic_suite().task("topic").train) - 6
    assert sum(info["polar"]["val_counts"].values()) == 6 and min(info["polar"]["val_counts"].values()) == 3
    by_label = {r["label"]: r for r in results["runs"]}
    for run in results["runs"]:
        assert [len(row) for row in run["val_acc"]] == [1, 2] == [len(row) for row in run["pred"]]
        # the stored predictions give back the stored accuracies exactly
        for i, row in enumerate(run["pred"]):
            for j, pred in enumerate(row):
                labels = info[results["suite"]["tasks"][j]]["eval_labels"]
                assert len(pred) == len(labels) == info[results["suite"]["tasks"][j]]["n_eval"]
                assert sum(p == y for p, y in zip(pred, labels, strict=True)) / len(labels) == pytest.approx(
                    run["acc"][i][j], abs=1e-9
                )
    probe = by_label["probe"]
    assert probe["trainable_params"] == 0 and all(s["steps"] == 0 for s in probe["stages"])
    assert [p["folds"] for p in probe["probe"]] and all(p["l2"] > 0 for p in probe["probe"])
    assert probe["acc"][1][0] == probe["acc"][0][0]  # a frozen backbone cannot forget
    # a frozen backbone's LM is the base: KL zero; full fine-tuning moves it
    assert probe["kl"]["kl"] == pytest.approx(0.0, abs=1e-6) and probe["kl"]["tokens"] > 0
    assert by_label["head_only"]["kl"]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert by_label["full"]["kl"]["kl"] > 1e-6
    # a resumed bench reads every stage back with its rows
    again, _ = run_bench(tmp_path, **STUDY_RUN)
    assert [(r["acc"], r["val_acc"], r["pred"]) for r in again["runs"]] == [
        (r["acc"], r["val_acc"], r["pred"]) for r in results["runs"]
    ]


def test_method_targets_option(tmp_path):
    spec = parse_method("lora-1:targets=v_proj")
    assert spec.targets == ("v_proj",) and spec.label == "lora-1:targets=v_proj"
    results, _ = run_bench(tmp_path, methods=["lora-1:targets=v_proj", "lora-1"])
    model = tiny_llama()
    v = [m for n, m in model.named_modules() if n.endswith("v_proj")]
    expected = sum(m.in_features + m.out_features for m in v)  # r = 1: one row of A and one column of B per layer
    by_label = {r["label"]: r for r in results["runs"]}
    assert by_label["lora-1:targets=v_proj"]["trainable_params"] == expected
    assert by_label["lora-1"]["trainable_params"] > expected
    for bad in ("lora-1:targets=", "lora-1:targets=v_proj+v_proj", "head_only:targets=v_proj", "probe-2",
                "head_only:head_init=probe", "curlora-2:head_init=warm"):
        with pytest.raises(CurloraError):
            parse_method(bad)
    with pytest.raises(CurloraError, match="nope"):
        run_bench(tmp_path, "bad", methods=["lora-1:targets=nope"])


def test_bad_study_options(tmp_path):
    with pytest.raises(CurloraError, match="--n-val must be"):
        make_config("quick", **{**CONFIG, "methods": ["probe"], "n_val": -1})
    with pytest.raises(CurloraError, match="--kl-max-tokens must be"):
        make_config("quick", **{**CONFIG, "methods": ["probe"], "kl_max_tokens": 0})
    with pytest.raises(CurloraError, match=r"no task\(s\) 'nope'"):
        run_bench(tmp_path, "order", methods=["probe"], task_order=["polar", "nope"])
    assert not (tmp_path / "order").exists()  # refused before anything was written
    suite = synthetic_suite()
    assert len(suite.tasks[0].train) == 24


def test_linear_probe_then_fine_tune(tmp_path):
    """head_init=probe: each head starts as the probe fitted on the model's features at that point (recorded per
    stage), then trains with the adapter; a different starting point gives different heads than a random init."""
    results, out = run_bench(tmp_path, methods=["curlora-2:head_init=probe", "curlora-2"])
    lpft, plain = results["runs"]
    assert all(s["head_init"]["l2"] > 0 and s["steps"] > 0 for s in lpft["stages"])
    assert all("head_init" not in s for s in plain["stages"])
    assert parse_method("curlora-2:head_init=random").head_init is None
