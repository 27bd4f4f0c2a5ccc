"""Run folders that cannot lie: recorded settings checked on reuse, one writer at a time, atomic --overwrite,
leftovers of killed writes removed; sft resumes from the newest intact checkpoint; results are strict JSON."""

import json
import math
import shutil

import pytest
from safetensors.torch import save_file
from test_bench import run_bench  # tests/recipes/test_bench.py: tiny model, generated suite
from typer.testing import CliRunner

import curlora.recipes.common as common
from curlora.cli import app
from curlora.errors import CurloraError
from curlora.files import finite_or_null
from curlora.recipes.common import claim_run_folder, lock_run_folder, newest_intact_checkpoint


class Notes:
    def __init__(self):
        self.notes = []

    def note(self, message):
        self.notes.append(message)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    _, out = run_bench(tmp_path_factory.mktemp("finished"), methods=["head_only"])
    return out


def test_runs_are_reused_only_under_their_own_settings_even_without_config_json(finished, tmp_path):
    shutil.copytree(finished, tmp_path / "run")
    (tmp_path / "run" / "config.json").unlink()
    with pytest.raises(CurloraError, match=r"run\.json was produced by other settings \(differs in: lr\)"):
        run_bench(tmp_path, methods=["head_only"], lr=1e-2)
    # the same settings: the finished run is reused as it was
    again, _ = run_bench(tmp_path, methods=["head_only"])
    before = json.loads((finished / "results.json").read_text())
    assert again["runs"][0]["acc"] == before["runs"][0]["acc"]
    assert "settings" not in again["runs"][0]


def test_a_stage_from_other_settings_is_refused(finished, tmp_path):
    shutil.copytree(finished, tmp_path / "run")
    (tmp_path / "run" / "config.json").unlink()
    (tmp_path / "run" / "runs" / "head_only" / "seed-0" / "run.json").unlink()
    with pytest.raises(CurloraError, match=r"stage\.json was produced by other settings \(differs in: batch_size\)"):
        run_bench(tmp_path, methods=["head_only"], batch_size=2)


def test_a_second_writer_is_refused_with_the_holder_named(tmp_path):
    out = tmp_path / "run"
    held = lock_run_folder(out)
    try:
        with pytest.raises(CurloraError, match=rf"{out} is in use by process \d+ on .*; wait"):
            claim_run_folder(out, {"lr": 1}, overwrite=False)
    finally:
        held.release()
    claim_run_folder(out, {"lr": 1}, overwrite=False).release()  # free again


def test_leftovers_of_killed_writes_are_removed_and_reported(tmp_path):
    out = tmp_path / "run"
    claim_run_folder(out, {"lr": 1}, overwrite=False).release()
    stage_tmp = out / "runs" / "m" / "seed-0" / ".stage-0-a.x1y2.tmp"
    stage_tmp.mkdir(parents=True)
    (stage_tmp / "heads.safetensors").write_bytes(b"half")
    (out / ".results.json.abc.tmp").write_text("{")
    (out / "runs" / "m" / "seed-0" / ".stage-1-b.old").mkdir()
    (tmp_path / ".trash-run-1234").mkdir()
    notes = Notes()
    claim_run_folder(out, {"lr": 1}, overwrite=False, reporter=notes).release()
    assert not stage_tmp.exists() and not (out / ".results.json.abc.tmp").exists()
    assert not (tmp_path / ".trash-run-1234").exists()
    assert not (out / "runs" / "m" / "seed-0" / ".stage-1-b.old").exists()
    assert len(notes.notes) == 1 and "removed 4 leftover(s)" in notes.notes[0]


def test_overwrite_moves_the_old_run_away_before_deleting(tmp_path, monkeypatch):
    out = tmp_path / "run"
    claim_run_folder(out, {"lr": 1}, overwrite=False).release()
    (out / "results.json").write_text("{}")

    def killed(*_args, **_kwargs):  # the process dies while deleting
        raise KeyboardInterrupt

    monkeypatch.setattr(common.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        claim_run_folder(out, {"lr": 2}, overwrite=True)
    assert not out.exists(), "a half-deleted old run must never stay under the run's name"
    assert len(list(tmp_path.glob(".trash-run-*"))) == 1
    monkeypatch.undo()
    claim_run_folder(out, {"lr": 2}, overwrite=False).release()
    assert not list(tmp_path.glob(".trash-run-*"))
    assert json.loads((out / "config.json").read_text()) == {"lr": 2}


def test_sft_resume_takes_the_newest_intact_checkpoint(tmp_path):
    for step in (1, 2, 3):
        ckpt = tmp_path / f"checkpoint-{step}"
        ckpt.mkdir()
        (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        save_file({"u": __import__("torch").ones(4)}, str(ckpt / "adapter_model.safetensors"))
    weights = tmp_path / "checkpoint-3" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])  # killed while writing
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text('{"glo')
    found, skipped = newest_intact_checkpoint(tmp_path)
    assert found == tmp_path / "checkpoint-1"
    assert [p.name for p, _ in skipped] == ["checkpoint-3", "checkpoint-2"]
    assert all(why for _, why in skipped)


def test_results_hold_null_and_a_flag_never_nan():
    clean = finite_or_null({"runs": [{"ppl_after": math.nan, "acc": [[0.5, math.inf]]}], "ok": 1.0})
    assert clean["runs"][0]["ppl_after"] is None and clean["runs"][0]["acc"] == [[0.5, None]]
    assert clean["non_finite"] == ["runs.0.acc.0.1", "runs.0.ppl_after"]
    json.dumps(clean, allow_nan=False)


def test_report_accepts_the_folder_or_its_results_json(finished, tmp_path):
    shutil.copytree(finished, tmp_path / "run")
    (tmp_path / "run" / "report.md").unlink(missing_ok=True)
    for target in (tmp_path / "run" / "results.json", tmp_path / "run"):
        result = CliRunner().invoke(app, ["report", str(target)])
        assert result.exit_code == 0, result.output
        assert (tmp_path / "run" / "report.md").is_file()


def test_a_killed_model_conversion_is_cleaned_up(tmp_path, caplog):
    from curlora.models.builtin import remove_cache_leftovers

    folder = tmp_path / "models" / "smollm2-135m"
    half = tmp_path / "models" / ".smollm2-135m.k3j2.tmp"
    half.mkdir(parents=True)
    (half / "model.safetensors").write_bytes(b"half of 538 MB")
    (tmp_path / "models" / ".smollm2-135m.lock").write_text("")  # the lock file stays
    with caplog.at_level("WARNING"):
        assert remove_cache_leftovers(folder) == [half]
    assert not half.exists() and (tmp_path / "models" / ".smollm2-135m.lock").exists()
    assert "killed model conversion" in caplog.text


def _squad_file(path):
    """A small SQuAD v2 file: three articles of eight answerable questions each."""
    data = []
    for a, (title, word) in enumerate([("Cats", "mat"), ("Dogs", "log"), ("Birds", "tree")]):
        context = f"The {title.lower()[:-1]} sat on the {word}. It liked the {word} a lot, every day."
        qas = [
            {"id": f"{a}-{k}", "question": f"Where did the {title.lower()[:-1]} sit ({k})?",
             "answers": [{"text": word, "answer_start": context.index(word)}], "is_impossible": False}
            for k in range(8)
        ]  # fmt: skip
        data.append({"title": title, "paragraphs": [{"context": context, "qas": qas}]})
    path.write_text(json.dumps({"version": "v2.0", "data": data}))
    return path


def test_sft_resume_skips_a_partly_written_checkpoint(tmp_path):
    pytest.importorskip("trl")
    from transformers import AutoModelForCausalLM

    from curlora.recipes.sft import SFTRecipeConfig, run_sft
    from curlora.testing import save_tiny_model, tiny_tokenizer

    base_dir = save_tiny_model(tmp_path / "base", "llama")
    squad = _squad_file(tmp_path / "squad.json")

    def config():
        return SFTRecipeConfig(
            data=str(squad), methods=["curlora"], rank=2, lr=5e-2, max_steps=3, batch_size=2, max_length=120,
            train_articles=1, max_train_questions=8, eval_questions=2, max_new_tokens=2, eval_batch_size=2,
            ppl_max_tokens=64, ppl_max_length=32, ppl_stride=32, save_steps=1, save_total_limit=None,
            logging_steps=1, device="cpu",
        )  # fmt: skip

    def sft(**kwargs):
        return run_sft(
            config(), tmp_path / "out", model=AutoModelForCausalLM.from_pretrained(base_dir).eval(),
            tokenizer=tiny_tokenizer(), ppl_text="the cat sat on the mat. " * 20, **kwargs,
        )  # fmt: skip

    sft()
    run = tmp_path / "out" / "runs" / "curlora-2"
    (tmp_path / "out" / "results.json").unlink()  # as if killed while checkpoint-3 was being written
    shutil.rmtree(run / "final")
    weights = run / "checkpoint-3" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    notes = Notes()
    for hook in ("bar", "advance", "end_bar", "stage"):
        setattr(notes, hook, lambda *a, **k: None)
    again = sft(resume=True, reporter=notes)
    assert again["methods"][0]["resumed_from"].endswith("checkpoint-2")
    assert any("skipped checkpoint checkpoint-3" in n for n in notes.notes), notes.notes
    assert (run / "final" / "adapter_checksums.json").is_file()  # load_adapter checks the final adapter


def test_a_diverged_run_writes_strict_json_with_null_and_a_flag(tmp_path):
    from curlora.reports.bench import validate_results, write_report

    results, out = run_bench(tmp_path, methods=["full"], lr=1e30)
    text = (out / "results.json").read_text()
    saved = json.loads(text, parse_constant=lambda token: pytest.fail(f"{token} in results.json"))
    validate_results(saved)
    (run,) = saved["runs"]
    assert run["diverged"] and run["ppl_after"] is None
    assert "runs.0.stages.0.train_loss" in saved["non_finite"] and run["stages"][0]["train_loss"] is None
    stage = json.loads((out / "runs" / "full" / "seed-0" / "stage-0-polar" / "stage.json").read_text())
    assert stage["train_loss"] is None and stage["non_finite"] == ["train_loss"]
    assert write_report(out).is_file()
