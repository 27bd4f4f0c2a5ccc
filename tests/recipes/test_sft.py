"""SQuAD QA with CURLoRA through TRL's SFTTrainer: loader, scoring, truncation, label masks, checkpoints, resume.

Tiny random-init model and tokenizer (curlora.testing) and a handful of questions from the real SQuAD 2.0 sample.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import curlora
from curlora.data.squad import SquadQuestion, load_squad, parse_squad, sample_questions, split_articles
from curlora.errors import CurloraError
from curlora.recipes.sft import SFTRecipeConfig, build_trainer, parse_sft_methods, run_sft
from curlora.recipes.sft.qa import (
    NO_ANSWER,
    PromptBuilder,
    build_examples,
    clean_answer,
    exact_match,
    f1_score,
    normalize_answer,
    squad_scores,
)
from curlora.testing import EOS_TOKEN, save_tiny_model, tiny_tokenizer

SQUAD_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "squad"
SQUAD = SQUAD_DIR / "dev-v2.0-sample.json"
needs_squad = pytest.mark.skipif(not SQUAD.is_file(), reason=f"SQuAD sample not found at {SQUAD}")

MAX_LEN = 200  # the tiny model has 256 positions
PPL_TEXT = "The cat sat on the mat, and the dog sat on the log. " * 12


# ------------------------------------------------------------------------------------------------ scoring


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  an   apple,  a pear ", "apple pear"),
        ("Theatre of the absurd", "theatre of absurd"),  # only whole-word articles go
        ("U.S.A.", "usa"),
        ("10th\tand\n11th centuries", "10th and 11th centuries"),
        ("'the' \"end\"", "end"),
        ("", ""),
    ],
)
def test_normalize_answer(raw, normalized):
    assert normalize_answer(raw) == normalized


def test_exact_match_and_f1_hand_computed():
    assert exact_match("the Eiffel Tower.", ["Eiffel tower"]) == 1.0
    assert exact_match("Eiffel", ["Eiffel tower"]) == 0.0
    # pred {in, 10th, century} vs gold {10th, and, 11th, centuries}: overlap 1 -> P 1/3, R 1/4, F1 2/7
    assert f1_score("in the 10th century", ["10th and 11th centuries"]) == pytest.approx(2 / 7)
    # maximum over gold answers: the second gold is an exact match after normalisation
    golds = ["10th and 11th centuries", "in the 10th and 11th centuries"]
    assert f1_score("In the 10th and 11th centuries!", golds) == 1.0
    assert exact_match("In the 10th and 11th centuries!", golds) == 1.0
    # repeated tokens count with multiplicity: pred {a1, a1, b} vs gold {a1, b, c}: overlap 2, P 2/3, R 2/3
    assert f1_score("a1 a1 b", ["a1 b c"]) == pytest.approx(2 / 3)
    assert f1_score("nothing shared", ["France"]) == 0.0
    # unanswerable (no gold answer): only the empty prediction scores
    assert exact_match("", []) == 1.0 and f1_score("", []) == 1.0
    assert exact_match("France", []) == 0.0 and f1_score("France", []) == 0.0
    assert f1_score("", ["France"]) == 0.0
    # a prediction that normalises to nothing against a real answer
    assert f1_score("the", ["France"]) == 0.0


def test_squad_scores_percent_and_splits():
    scores = squad_scores(
        ["France", "in the 10th century", "", "Rollo"], [["France"], ["10th and 11th centuries"], [], []]
    )
    assert scores["n"] == 4
    assert scores["exact_match"] == pytest.approx(100 * (1 + 0 + 1 + 0) / 4)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 7 + 1 + 0) / 4)
    assert scores["has_answer_n"] == 2 and scores["no_answer_n"] == 2
    assert scores["has_answer_f1"] == pytest.approx(100 * (1 + 2 / 7) / 2)
    with pytest.raises(CurloraError):
        squad_scores(["a"], [["a"], ["b"]])


def test_clean_answer():
    assert clean_answer(" France\nQuestion: next") == "France"
    assert clean_answer("\n\n France\nmore") == "France"  # leading blank lines do not make an empty answer
    assert clean_answer(" Unanswerable.") == ""
    assert clean_answer(" Unanswerable.", no_answer=None) == "Unanswerable."


def test_parse_methods():
    labels = [s.label for s in parse_sft_methods(["none", "curlora", "lora-8:lr=1e-4"], rank=4)]
    assert labels == ["none", "curlora-4", "lora-8:lr=1e-4"]
    for bad in (["full"], ["curlora", "curlora-4"], []):
        with pytest.raises(CurloraError):
            parse_sft_methods(bad, rank=4)


# ------------------------------------------------------------------------------------------------ loader


@needs_squad
def test_load_real_sample_and_split():
    articles = load_squad(SQUAD)
    assert [a.title for a in articles][:2] == ["Normans", "Computational_complexity_theory"]
    qs = [q for a in articles for q in a.questions]
    assert len(articles) == 5 and len(qs) == 1407
    assert sum(not q.is_impossible for q in qs) == 705
    for q in qs:
        if q.is_impossible:
            assert q.answers == ()
        else:
            assert all(q.context[s : s + len(t)] == t for t, s in zip(q.answers, q.answer_starts, strict=True))
    train, held = split_articles(articles, eval_articles=1)
    assert [a.title for a in held] == ["Victoria_(Australia)"] and len(train) == 4
    assert split_articles(articles, eval_articles=0.2) == (train, held)
    train2, held2 = split_articles(articles, eval_articles=2, train_articles=1)
    assert [a.title for a in train2] == ["Normans"] and len(held2) == 2
    assert not {a.title for a in train2} & {a.title for a in held2}
    with pytest.raises(CurloraError, match="leaves none"):
        split_articles(articles, eval_articles=5)
    assert sample_questions(qs, 10, 3) == sample_questions(qs, 10, 3)  # deterministic


def _write(tmp_path: Path, name: str, content) -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def _squad_obj(**qa_overrides) -> dict:
    qa = {"id": "q1", "question": "Who?", "answers": [{"text": "Rollo", "answer_start": 0}], **qa_overrides}
    return {"version": "v2.0", "data": [{"title": "T", "paragraphs": [{"context": "Rollo ruled.", "qas": [qa]}]}]}


def test_malformed_files(tmp_path, monkeypatch):
    with pytest.raises(CurloraError, match="not valid JSON"):
        load_squad(_write(tmp_path, "bad.json", '{"data": [ '))
    with pytest.raises(CurloraError, match="missing key 'data'"):
        load_squad(_write(tmp_path, "nodata.json", {"version": "v2.0"}))
    with pytest.raises(CurloraError, match=r"paragraphs\[0\]: missing key 'qas'"):
        load_squad(_write(tmp_path, "noqas.json", {"data": [{"title": "T", "paragraphs": [{"context": "c"}]}]}))
    obj = _squad_obj()
    del obj["data"][0]["paragraphs"][0]["qas"][0]["question"]
    with pytest.raises(CurloraError, match=r"qas\[0\]: missing key 'question'"):
        load_squad(_write(tmp_path, "noquestion.json", obj))
    with pytest.raises(CurloraError, match="expected list"):
        load_squad(_write(tmp_path, "answers.json", _squad_obj(answers="Rollo")))
    with pytest.raises(CurloraError, match="answer_start"):
        load_squad(_write(tmp_path, "start.json", _squad_obj(answers=[{"text": "Rollo"}])))
    with pytest.raises(CurloraError, match="no questions"):
        load_squad(_write(tmp_path, "empty.json", {"data": []}))
    with pytest.raises(CurloraError, match="does not exist"):
        load_squad(tmp_path / "missing.json")
    with pytest.raises(CurloraError, match="is a folder"):
        load_squad(tmp_path)
    # a good file parses; a wrong answer_start is repaired by searching the text
    good = load_squad(_write(tmp_path, "good.json", _squad_obj(answers=[{"text": "ruled", "answer_start": 99}])))
    assert good[0].questions[0].answer_starts == (6,)
    # a hub id that cannot be reached gives a clear error, not a traceback from datasets
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hugging Face Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(CurloraError, match="could not load SQuAD data 'squad_v2'.*official SQuAD JSON"):
        load_squad("squad_v2")


def test_parse_hub_style_impossible_and_v11():
    obj = _squad_obj(answers=[], is_impossible=True, plausible_answers=[{"text": "Rollo", "answer_start": 0}])
    q = parse_squad(obj)[0].questions[0]
    assert q.is_impossible and q.answers == ()
    v11 = _squad_obj()
    v11["version"] = "1.1"
    assert not parse_squad(v11)[0].questions[0].is_impossible


# ------------------------------------------------------------------------------------------------ truncation


def test_context_truncation_keeps_question_and_answer():
    tok = tiny_tokenizer()
    words = [f"w{i}" for i in range(400)]
    context = " ".join(words[:3] + ["Rollo"] + words[3:])
    start = context.index("Rollo")
    q = SquadQuestion("q1", "T", context, "Who ruled Normandy first?", ("Rollo",), (start,))
    builder = PromptBuilder(tok, max_length=96)
    assert builder.n_tokens(builder.prompt(context, q.question)) > 96  # it really has to be cut
    ex, why = builder.train_example(q)
    assert why == "" and ex is not None and ex.truncated
    assert builder.n_tokens(ex.prompt + ex.completion) <= 96
    assert ex.prompt.endswith("\nQuestion: Who ruled Normandy first?\nAnswer:")
    kept = ex.prompt.removeprefix("Context: ").split("\nQuestion:")[0]
    assert context.startswith(kept) and "Rollo" in kept and kept.split()[-1] in words  # cut at a word end
    assert ex.completion == " Rollo" + EOS_TOKEN and ex.target == "Rollo"
    # the answer is the last word of the long context: cutting the context would cut the answer -> skipped
    late = SquadQuestion("q2", "T", " ".join(words) + " Rollo", "Who?", ("Rollo",), (len(" ".join(words)) + 1,))
    assert builder.train_example(late) == (None, "answer cut from context")
    # a question that alone does not fit
    long_q = SquadQuestion("q3", "T", "Rollo.", " ".join(words), ("Rollo",), (0,))
    assert builder.train_example(long_q) == (None, "question too long")
    # evaluation prompts reserve room for the generated answer
    ev, _ = builder.eval_example(q, reserve=32)
    assert builder.n_tokens(ev.prompt) <= 96 - 32 and "Rollo" in ev.prompt and ev.completion == ""
    # unanswerable: skipped by default, trained with the marker on request
    imp = SquadQuestion("q4", "T", "Rollo ruled.", "Who?", (), (), is_impossible=True)
    assert builder.train_example(imp) == (None, "unanswerable")
    ex_imp, _ = builder.train_example(imp, keep_unanswerable=True)
    assert ex_imp.completion == f" {NO_ANSWER}{EOS_TOKEN}"
    examples, stats = build_examples(builder, [q, late, long_q, imp], train=True)
    assert [e.id for e in examples] == ["q1"]
    assert stats.skipped == {"answer cut from context": 1, "question too long": 1, "unanswerable": 1}


def test_template_is_checked():
    with pytest.raises(CurloraError, match="context"):
        PromptBuilder(tiny_tokenizer(), template="Q: {question} A:")
    with pytest.raises(CurloraError):
        PromptBuilder(tiny_tokenizer(), template="{context} {question} {oops}")


# ------------------------------------------------------------------------------------------------ training

_FRESH_PROCESS = textwrap.dedent(
    """
    import sys, torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    import curlora  # registers CURLoRA with PEFT

    base_dir, ckpt, ids_file, out_file = sys.argv[1:]
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    model = PeftModel.from_pretrained(base, ckpt).eval()
    ids = torch.load(ids_file)
    with torch.no_grad():
        torch.save(model(input_ids=ids).logits, out_file)
    """
)


def _questions(n: int, tok) -> list:
    """The first `n` answerable questions of the sample whose answer survives a MAX_LEN cut (tiny tokenizer)."""
    articles = load_squad(SQUAD)
    builder = PromptBuilder(tok, max_length=MAX_LEN)
    out = []
    for q in (q for a in articles[:1] for q in a.questions if not q.is_impossible):
        ex, _ = builder.train_example(q)
        if ex is not None:
            out.append(ex)
        if len(out) == n:
            break
    return out


def _curlora_model(base_dir: Path):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    return get_peft_model(base, curlora.CURLoRAConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj"]))


def _train(base_dir: Path, out: Path, examples, resume_from=None):
    tok = tiny_tokenizer()
    model = _curlora_model(base_dir)
    trainer = build_trainer(
        model, tok, examples, out, lr=5e-2, max_steps=4, batch_size=2, save_steps=2, warmup_ratio=0.0,
        max_length=MAX_LEN, use_cpu=True, logging_steps=1,
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    return trainer


def _u(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "curlora_U" in n}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    if not SQUAD.is_file():
        pytest.skip(f"SQuAD sample not found at {SQUAD}")
    root = tmp_path_factory.mktemp("sft")
    base_dir = save_tiny_model(root / "base", "llama")
    tok = tiny_tokenizer()
    examples = _questions(8, tok)
    trainer = _train(base_dir, root / "run", examples)
    ids = tok(examples[0].prompt, return_tensors="pt")["input_ids"]
    model = trainer.model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        with model.disable_adapter():
            base_logits = model(input_ids=ids).logits
    return {
        "root": root, "base_dir": base_dir, "examples": examples, "trainer": trainer, "ids": ids,
        "logits": logits, "base_logits": base_logits, "u": _u(model),
    }  # fmt: skip


def test_answer_only_label_mask(trained):
    trainer, examples = trained["trainer"], trained["examples"]
    tok = tiny_tokenizer()
    # a batch exactly as the trainer builds it: its own dataloader and collator (dynamic right padding)
    batch = next(iter(trainer.get_train_dataloader()))
    assert set(batch) >= {"input_ids", "attention_mask", "labels"}
    by_prompt = {e.prompt: e for e in examples}
    for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"], strict=True):
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any()  # right padding, no holes
        text = tok.decode(ids[:n].tolist())
        ex = next(e for p, e in by_prompt.items() if text.startswith(p))
        prompt_len = len(tok(ex.prompt)["input_ids"])
        assert ids[:prompt_len].tolist() == tok(ex.prompt)["input_ids"]
        assert (labels[:prompt_len] == -100).all()  # no loss on the prompt (context, question, "Answer:")
        assert (labels[n:] == -100).all()  # nor on padding
        answer = labels[prompt_len:n]
        assert (answer == ids[prompt_len:n]).all()  # every answer token and the eos are trained
        assert tok.decode(answer.tolist()) == ex.completion == f" {ex.target}{EOS_TOKEN}"
        assert answer[-1].item() == tok.eos_token_id
    # dynamic padding: the batch is as long as its longest example, not max_length
    assert batch["input_ids"].shape[1] == int(batch["attention_mask"].sum(1).max()) < MAX_LEN


def test_checkpoints_are_curlora_adapters(trained):
    from safetensors import safe_open

    run = trained["root"] / "run"
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    ckpt = run / "checkpoint-4"
    config = curlora.check_adapter_dir(ckpt)
    assert config["peft_type"] == "CURLORA" and config["r"] == 4
    with safe_open(str(ckpt / "adapter_model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    kinds = {k.split("curlora_")[1].split(".")[0] for k in keys}
    assert kinds == {"U", "cols", "rows", "fingerprint"}  # C and R are rebuilt from the indices, never saved
    assert all((ckpt / f).is_file() for f in ("optimizer.pt", "scheduler.pt", "trainer_state.json"))
    assert any(u.abs().max() > 0 for u in trained["u"].values())  # training moved U away from zero


def test_checkpoint_reloads_in_fresh_process(trained, tmp_path):
    ids_file, out_file = tmp_path / "ids.pt", tmp_path / "logits.pt"
    torch.save(trained["ids"], ids_file)
    ckpt = trained["root"] / "run" / "checkpoint-4"
    proc = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS, str(trained["base_dir"]), str(ckpt), str(ids_file), str(out_file)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    fresh = torch.load(out_file)
    assert (trained["logits"] - trained["base_logits"]).abs().max() > 1e-4  # the adapter changes the outputs
    torch.testing.assert_close(fresh, trained["logits"], atol=1e-5, rtol=1e-5)


def test_resume_from_checkpoint_matches_uninterrupted(trained, tmp_path):
    # an interrupted run: only checkpoint-2 survived
    run = tmp_path / "run"
    shutil.copytree(trained["root"] / "run" / "checkpoint-2", run / "checkpoint-2")
    trainer = _train(trained["base_dir"], run, trained["examples"], resume_from=run / "checkpoint-2")
    assert trainer.state.global_step == 4
    resumed = _u(trainer.model)
    assert resumed.keys() == trained["u"].keys()
    for name, u in resumed.items():
        torch.testing.assert_close(u, trained["u"][name], atol=1e-6, rtol=1e-5)


@needs_squad
def test_pipeline_end_to_end_and_resume(tmp_path):
    from transformers import AutoModelForCausalLM

    base_dir = save_tiny_model(tmp_path / "base", "llama")

    def config():
        return SFTRecipeConfig(
            data=str(SQUAD), methods=["none", "curlora"], rank=4, lr=5e-2, max_steps=3, batch_size=2,
            max_length=MAX_LEN, train_articles=1, max_train_questions=12, eval_questions=4, max_new_tokens=4,
            eval_batch_size=4, ppl_max_tokens=200, ppl_max_length=64, ppl_stride=64, save_steps=2, logging_steps=1,
            device="cpu",
        )  # fmt: skip

    def model():
        return AutoModelForCausalLM.from_pretrained(base_dir).eval()

    out = tmp_path / "out"
    res = run_sft(config(), out, model=model(), tokenizer=tiny_tokenizer(), ppl_text=PPL_TEXT)
    assert [m["label"] for m in res["methods"]] == ["none", "curlora-4"]
    data = res["data"]
    assert data["train_articles"] == ["Normans"] and data["eval_articles"] == ["Victoria_(Australia)"]
    assert data["eval_examples"] == 4 and 0 < data["train_examples"] <= 12
    none, cur = res["methods"]
    assert none["ppl_after"] == res["ppl"]["before"] and none["trainable_params"] == 0
    for m in res["methods"]:
        assert 0 <= m["exact_match"] <= 100 and 0 <= m["f1"] <= 100 and m["n"] == 4
        assert math.isfinite(m["ppl_after"])
    assert cur["train_steps"] == 3 and cur["trainable_params"] == 3 * 2 * 16  # 3 projections × 2 layers × 4×4 U
    assert cur["ppl_after"] != res["ppl"]["before"]
    saved = json.loads((out / "results.json").read_text())
    assert saved["methods"][1]["f1"] == cur["f1"]
    table = (out / "results.md").read_text()
    assert "| none |" in table and "| curlora-4 |" in table
    assert len(json.loads((out / "predictions-curlora-4.json").read_text())) == 4
    assert (out / "runs" / "curlora-4" / "final" / "adapter_model.safetensors").is_file()

    # the same folder again without --resume is refused; with --resume the trainer continues from a checkpoint
    with pytest.raises(CurloraError, match="--resume"):
        run_sft(config(), out, model=model(), tokenizer=tiny_tokenizer(), ppl_text=PPL_TEXT)
    (out / "results.json").unlink()  # as if killed after checkpoint-2, before the run finished
    shutil.rmtree(out / "runs" / "curlora-4" / "checkpoint-3", ignore_errors=True)
    shutil.rmtree(out / "runs" / "curlora-4" / "final")
    again = run_sft(config(), out, model=model(), tokenizer=tiny_tokenizer(), ppl_text=PPL_TEXT, resume=True)
    cur2 = again["methods"][1]
    assert cur2["resumed_from"].endswith("checkpoint-2") and cur2["train_steps"] == 3
    assert cur2["f1"] == pytest.approx(cur["f1"]) and cur2["ppl_after"] == pytest.approx(cur["ppl_after"], rel=1e-5)
    # other settings cannot be resumed into the same folder
    other = config()
    other.max_length = 128
    with pytest.raises(CurloraError, match="max_length"):
        run_sft(other, out, model=model(), tokenizer=tiny_tokenizer(), ppl_text=PPL_TEXT, resume=True)


@needs_squad
def test_empty_training_set_is_an_error(tmp_path):
    from curlora.testing import tiny_llama

    cfg = SFTRecipeConfig(data=str(SQUAD), methods=["curlora"], rank=4, max_length=40, max_new_tokens=4,
                          train_articles=1, max_train_questions=5, eval_questions=2, device="cpu")  # fmt: skip
    with pytest.raises(CurloraError, match="training set is empty"):
        run_sft(cfg, tmp_path / "out", model=tiny_llama(), tokenizer=tiny_tokenizer(), ppl_text=PPL_TEXT)


def test_cli_registered_and_reports_bad_data(tmp_path):
    from typer.testing import CliRunner

    from curlora.cli import app

    bad = _write(tmp_path, "bad.json", "{ not json")
    result = CliRunner().invoke(app, ["sft", "--data", str(bad), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "not valid JSON" in result.output
    assert not (tmp_path / "out").exists()  # nothing written for a run that could not start


@needs_squad
def test_bf16_run_keeps_u_in_float32(tmp_path):
    """The CUDA default (bf16 base, bf16 autocast in the trainer), exercised here with CPU autocast."""
    from safetensors.torch import load_file

    from curlora.testing import tiny_llama

    cfg = SFTRecipeConfig(data=str(SQUAD), methods=["curlora"], rank=4, lr=5e-2, max_steps=2, batch_size=2,
                          max_length=MAX_LEN, train_articles=1, max_train_questions=4, eval_questions=2,
                          max_new_tokens=4, eval_batch_size=2, ppl_max_tokens=128, ppl_max_length=64, ppl_stride=64,
                          device="cpu", dtype="bfloat16")  # fmt: skip
    res = run_sft(cfg, tmp_path / "out", model=tiny_llama(), tokenizer=tiny_tokenizer(), ppl_text=PPL_TEXT)
    assert res["dtype"] == "bfloat16" and math.isfinite(res["methods"][0]["ppl_after"])
    saved = load_file(tmp_path / "out" / "runs" / "curlora-4" / "final" / "adapter_model.safetensors")
    us = [v for k, v in saved.items() if "curlora_U" in k]
    assert us and all(u.dtype == torch.float32 for u in us) and any(u.abs().max() > 0 for u in us)


def test_generation_stops_at_a_newline_after_answer_text():
    from curlora.recipes.sft.qa import _newline_stopper, _stop_token_ids

    tok = tiny_tokenizer()
    stop = _newline_stopper(_stop_token_ids(tok), prompt_len=1)

    def ended(text: str) -> bool:
        return bool(stop(torch.tensor([[0, *tok(text)["input_ids"]]]), None).item())

    assert not ended("\n") and not ended("\n Rollo")  # a leading newline does not end an empty answer
    assert ended("\n Rollo\n") and ended(" Rollo.\nQuestion")
    assert not ended(" Rollo")


def test_missing_trl_gives_an_install_hint(monkeypatch):
    import sys

    from curlora.errors import CurloraError
    from curlora.recipes.sft import trainer

    monkeypatch.setitem(sys.modules, "trl", None)  # makes `import trl` raise ImportError
    with pytest.raises(CurloraError, match=r"pip install 'curlora\[sft\]'"):
        trainer._checkpointing_arg()
