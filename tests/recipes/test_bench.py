"""The bench end to end on tiny random-init models and generated tasks: results, resume, reload, bad inputs."""

import json
import random

import pytest
import torch
from safetensors.torch import load_file

import curlora
from curlora.data import Example, Suite, Task
from curlora.errors import CurloraError
from curlora.recipes.bench import Bench, Reporter, make_config
from curlora.recipes.bench.classify import backbone_of, encode, new_head, pooled_hidden
from curlora.reports.bench import validate_results, write_report
from curlora.testing import tiny_gpt2, tiny_llama, tiny_tokenizer

WORDS = "alpha beta gamma delta river stone cloud paper green quiet light storm".split()


def _sentences(rng, n, marker):
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) + f" {marker}" for _ in range(n)]


def synthetic_suite(n_train=24, n_eval=12) -> Suite:
    rng = random.Random(0)

    def single(name, markers):
        splits = []
        for n in (n_train, n_eval):
            examples = [Example(text=t, label=k) for k, m in enumerate(markers) for t in _sentences(rng, n // 2, m)]
            rng.shuffle(examples)
            splits.append(examples)
        return Task(name=name, kind="single", label_names=tuple(markers), train=splits[0], eval=splits[1])

    def pair(name):
        splits = []
        for n in (n_train, n_eval):
            examples = []
            for k in range(n):
                a = _sentences(rng, 1, "")[0]
                b = a if k % 2 else _sentences(rng, 1, "")[0]
                examples.append(Example(text=a, text_pair=b, label=k % 2))
            splits.append(examples)
        return Task(name=name, kind="pair", label_names=("different", "same"), train=splits[0], eval=splits[1])

    tasks = [single("polar", ["good", "bad"]), pair("para"), single("topic", ["sun", "moon", "star"])]
    text = "\n".join(_sentences(rng, 40, "end"))
    return Suite(name="synthetic", tasks=tasks, ppl_name="synthetic-text", ppl_text=text, notes=["generated"])


CONFIG = dict(
    model="tiny",
    n_train=12,
    epochs=1,
    batch_size=4,
    eval_batch_size=8,
    lr=5e-3,
    max_length=32,
    ppl_max_length=64,
    ppl_stride=32,
    ppl_max_tokens=256,
    device="cpu",
)


def run_bench(
    tmp_path,
    name="run",
    methods=("curlora-2", "lora-2", "head_only", "full"),
    arch=tiny_llama,
    reporter=None,
    **overrides,
):
    config = make_config("quick", **{**CONFIG, "methods": list(methods), **overrides})
    bench = Bench(
        config, tmp_path / name, model=arch(), tokenizer=tiny_tokenizer(), suite=synthetic_suite(), reporter=reporter
    )
    return bench.run(), tmp_path / name


def test_end_to_end_tiny_llama(tmp_path):
    results, out = run_bench(tmp_path)
    validate_results(results)
    assert json.loads((out / "results.json").read_text())["runs"] == results["runs"]
    by_label = {r["label"]: r for r in results["runs"]}
    assert list(by_label) == ["curlora-2", "lora-2", "head_only", "full"]
    for run in results["runs"]:
        assert run["complete"] and [len(row) for row in run["acc"]] == [1, 2, 3]
        assert all(0 <= a <= 1 for row in run["acc"] for a in row)
        assert run["peak_lr"] == pytest.approx(5e-3, rel=0.2)
    # frozen backbone: head_only cannot forget, and its perplexity cannot move
    head_only = by_label["head_only"]
    assert head_only["ppl_after"] == pytest.approx(head_only["ppl_before"], rel=1e-6)
    assert head_only["acc"][2][0] == head_only["acc"][0][0]
    assert head_only["trainable_params"] == 0 and head_only["delta_norm_ratio"] is None
    cur = by_label["curlora-2"]
    assert cur["trainable_params"] == 2 * 3 * 4  # layers × q/k/v × r²
    assert cur["delta_norm_ratio"]["max"] > 0  # U moved: something was learned
    assert cur["adapter_bytes"] < by_label["lora-2"]["adapter_bytes"] < by_label["full"]["adapter_bytes"]
    assert by_label["full"]["ppl_after"] != pytest.approx(by_label["full"]["ppl_before"], rel=1e-6)
    # every stage saved: adapter + heads + stage record
    stage = out / "runs" / "curlora-2" / "seed-0" / "stage-1-para"
    assert (stage / "adapter" / "adapter_model.safetensors").is_file()
    assert set(load_file(str(stage / "heads.safetensors"))) == {
        "head_0.weight",
        "head_0.bias",
        "head_1.weight",
        "head_1.bias",
    }
    report = write_report(out)
    assert "curlora-2" in report.read_text() and (out / "acc_matrix.png").is_file()


def test_stage_can_be_reloaded_and_re_evaluated(tmp_path):
    results, out = run_bench(tmp_path, methods=["curlora-2"])
    stage = out / "runs" / "curlora-2" / "seed-0" / "stage-2-topic"
    model = curlora.load_adapter(tiny_llama(), stage / "adapter").eval()
    heads = load_file(str(stage / "heads.safetensors"))
    suite, tok = synthetic_suite(), tiny_tokenizer()
    for j, task in enumerate(suite.tasks):
        head = new_head(64, len(task.label_names), 0)
        head.load_state_dict({"weight": heads[f"head_{j}.weight"], "bias": heads[f"head_{j}.bias"]})
        enc = encode(
            tok, [e.text for e in task.eval], [e.text_pair for e in task.eval], [e.label for e in task.eval], 32
        )
        correct = 0
        with torch.no_grad():
            for ids, label in zip(enc.ids, enc.labels, strict=True):
                x = torch.tensor([ids])
                pred = head(pooled_hidden(backbone_of(model), x, torch.ones_like(x))).argmax(-1)
                correct += int(pred.item() == label)
        assert correct / len(enc) == pytest.approx(results["runs"][0]["acc"][2][j], abs=1e-6)


def test_heads_learn_at_their_own_rate(tmp_path):
    """--head-lr (or head_lr= in a method spec) gives the heads their own peak rate and records it; without it the
    heads train at the method's lr, as they always did."""
    base, base_out = run_bench(tmp_path, "base", methods=["curlora-2"])
    fast, fast_out = run_bench(tmp_path, "fast", methods=["curlora-2"], head_lr=5e-2)
    spec, spec_out = run_bench(tmp_path, "spec", methods=["curlora-2:head_lr=5e-2"])
    assert base["runs"][0]["head_lr"] == 5e-3 and fast["runs"][0]["head_lr"] == 5e-2 == spec["runs"][0]["head_lr"]
    stage = "seed-0/stage-0-polar/heads.safetensors"
    slow_head = load_file(str(base_out / "runs" / "curlora-2" / stage))["head_0.weight"]
    fast_head = load_file(str(fast_out / "runs" / "curlora-2" / stage))["head_0.weight"]
    spec_head = load_file(str(spec_out / "runs" / "curlora-2_head_lr_5e-2" / stage))["head_0.weight"]
    assert not torch.equal(slow_head, fast_head)
    assert torch.equal(fast_head, spec_head)  # the option and the spec key are the same setting
    with pytest.raises(CurloraError, match="--head-lr must be a finite number > 0, got 0.0"):
        make_config("quick", **{**CONFIG, "methods": ["curlora-2"], "head_lr": 0.0})
    with pytest.raises(CurloraError, match="head_lr"):
        make_config("quick", **{**CONFIG, "methods": ["curlora-2:head_lr=nan"]})


class StopAfter(Reporter):
    def __init__(self, n):
        self.left = n

    def stage(self, summary):
        self.left -= 1
        if self.left == 0:
            raise KeyboardInterrupt


def _numbers(results):
    return [
        (r["label"], r["acc"], [s["train_loss"] for s in r["stages"]], r["ppl_after"], r["delta_norm_ratio"])
        for r in results["runs"]
    ]


@pytest.mark.parametrize("stop_after", [1, 4])
def test_resume_gives_the_numbers_of_an_uninterrupted_run(tmp_path, stop_after):
    methods = ["curlora-2", "lora-2"]
    full, _ = run_bench(tmp_path, "full", methods=methods)
    with pytest.raises(KeyboardInterrupt):
        run_bench(tmp_path, "killed", methods=methods, reporter=StopAfter(stop_after))
    partial = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert sum(len(r["acc"]) for r in partial["runs"]) == stop_after
    resumed, _ = run_bench(tmp_path, "killed", methods=methods)
    assert _numbers(resumed) == _numbers(full)


def test_gpt2_conv1d_end_to_end(tmp_path):
    results, _ = run_bench(tmp_path, methods=["curlora-2", "lora-2"], arch=tiny_gpt2)
    assert all(r["complete"] for r in results["runs"])
    assert results["config"]["target_modules"] == ["c_attn"]


def test_bad_inputs(tmp_path):
    with pytest.raises(CurloraError, match="unknown method"):
        make_config("quick", methods=["dora-4"])
    with pytest.raises(CurloraError, match="needs a rank"):
        make_config("quick", methods=["curlora"])
    with pytest.raises(CurloraError, match="unknown preset"):
        make_config("fast")
    with pytest.raises(CurloraError, match="unknown sampling"):
        make_config("quick", methods=["curlora-4:sampling=random"])
    with pytest.raises(CurloraError, match="rank 100 .* larger than"):
        run_bench(tmp_path, methods=["lora-100"])
    with pytest.raises(CurloraError, match="n_train|larger|only"):
        run_bench(tmp_path, "big", methods=["head_only"], n_train=10_000)
    assert not (tmp_path / "run").exists() and not (tmp_path / "big").exists()  # nothing half-written
    run_bench(tmp_path, "same", methods=["head_only"])
    with pytest.raises(CurloraError, match="other settings .*lr"):
        run_bench(tmp_path, "same", methods=["head_only"], lr=1e-2)
    with pytest.raises(CurloraError, match="one class|single class|only one"):
        Task(
            name="x",
            kind="single",
            label_names=("a", "b"),
            train=[Example("t", 0)] * 4,
            eval=[Example("t", 0), Example("u", 1)],
        )


def test_merge_parts_of_one_study(tmp_path):
    from curlora.reports.results import merge_results

    a, _ = run_bench(tmp_path, "a", methods=["head_only"])
    b, _ = run_bench(tmp_path, "b", methods=["curlora-2"])
    merged = merge_results([a, b])
    validate_results(merged)
    assert [r["label"] for r in merged["runs"]] == ["head_only", "curlora-2"]
    assert merged["config"]["methods"] == ["head_only", "curlora-2"]
    with pytest.raises(CurloraError, match="appears in two parts"):
        merge_results([a, a])
    c, _ = run_bench(tmp_path, "c", methods=["curlora-2"], lr=1e-2)
    with pytest.raises(CurloraError, match="other settings .*lr"):
        merge_results([a, c])


def test_cli_method_list_keeps_options_together():
    from curlora.cli.bench import _method_list

    assert _method_list("curlora-16:lr=1e-3,sampling=uniform,lora-4,head_only") == [
        "curlora-16:lr=1e-3,sampling=uniform", "lora-4", "head_only"]
    spec = make_config("quick", methods=_method_list("curlora-8:lr=1e-2,alpha=2")).methods[0]
    assert spec == "curlora-8:lr=1e-2,alpha=2"
