"""`curlora sft` on two CPU processes (gloo; DDP through the Hugging Face Trainer) against one process.

`--batch-size` is the global batch, so two ranks must train the same adapter as one process (U within 1e-5) and
report the same numbers; rank 0 alone evaluates, prints and writes the recipe's files.
"""

import json
import os
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # tests/: the process helpers
from test_distributed import _free_port, _writes_under  # noqa: E402
from test_sft import MAX_LEN, PPL_TEXT, SQUAD, needs_squad  # noqa: E402

LABELS = ["none", "curlora-4"]


def _args(model_dir: Path, out: Path) -> list[str]:
    # 16 training examples (of 40 questions; the others do not fit MAX_LEN), global batch 4 (2 per rank): 3 steps
    # on 3 different batches; checkpoints at steps 2 and 3
    return [
        "sft", "--data", str(SQUAD), "--model", str(model_dir), "--method", ",".join(LABELS), "--rank", "4",
        "--out", str(out), "--lr", "5e-2", "--max-steps", "3", "--batch-size", "4", "--max-length", str(MAX_LEN),
        "--train-articles", "1", "--max-train-questions", "40", "--eval-questions", "4", "--max-new-tokens", "4",
        "--eval-batch-size", "4", "--ppl-max-tokens", "200", "--ppl-max-length", "64", "--ppl-stride", "64",
        "--save-steps", "2", "--device", "cpu",
    ]  # fmt: skip


def _cli(model_dir: Path, out: Path):
    """Run `curlora sft` in this process, with a short general text instead of the built-in suite's."""
    from typer.testing import CliRunner

    import curlora.data
    from curlora.cli import app

    curlora.data.load_suite = lambda *a, **k: types.SimpleNamespace(ppl_text=PPL_TEXT, ppl_name="test text")
    return CliRunner().invoke(app, _args(model_dir, out))


def _worker(rank: int, world: int, port: int, model_dir: str, root: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
        OMP_NUM_THREADS="1",  # accelerate would otherwise pick its own thread count for MULTI_CPU
    )  # fmt: skip
    torch.set_num_threads(1)
    writes: list[str] = []
    sys.addaudithook(_writes_under(root, writes))
    result = _cli(Path(model_dir), Path(root) / "run")
    report = {"exit_code": result.exit_code, "output": result.output, "writes": writes}
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        report["error"] = "".join(traceback.format_exception(result.exception))
    (Path(root) / f"rank{rank}.json").write_text(json.dumps(report))


def _tensors(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "runs" / "curlora-4" / "final" / "adapter_model.safetensors"))


@needs_squad
def test_sft_two_processes_match_one(tmp_path, monkeypatch):
    import curlora.data
    from curlora.testing import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "base", "llama")
    monkeypatch.setattr(curlora.data, "load_suite", curlora.data.load_suite)  # _cli replaces it; restore after
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks run one thread each
    try:
        single = _cli(model_dir, tmp_path / "single")
    finally:
        torch.set_num_threads(threads)
    assert single.exit_code == 0, single.output
    root = tmp_path / "multi"
    root.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(model_dir), str(root)), nprocs=2, join=True)
    ranks = [json.loads((root / f"rank{r}.json").read_text()) for r in range(2)]
    for r, rank in enumerate(ranks):
        assert rank["exit_code"] == 0, (r, rank.get("error"), rank["output"][-3000:])

    ref = json.loads((tmp_path / "single" / "results.json").read_text())
    got = json.loads((root / "run" / "results.json").read_text())
    assert got["environment"]["processes"] == 2 and "processes" not in ref["environment"]
    assert got["config"] == ref["config"] and got["data"] == ref["data"]
    assert got["data"]["train_examples"] >= 12  # 3 steps of 4 without repeating an example
    assert got["ppl"]["before"] == pytest.approx(ref["ppl"]["before"], rel=1e-6)
    assert [m["label"] for m in got["methods"]] == [m["label"] for m in ref["methods"]] == LABELS
    for mine, want in zip(got["methods"], ref["methods"], strict=True):
        for key in ("exact_match", "f1", "n", "trainable_params", "train_steps"):
            assert mine.get(key) == want.get(key), key
        assert mine["ppl_after"] == pytest.approx(want["ppl_after"], rel=1e-5)
    cur, cur_ref = got["methods"][1], ref["methods"][1]
    assert cur["train_steps"] == 3
    assert cur["train_loss"] == pytest.approx(cur_ref["train_loss"], rel=1e-5)  # the global loss, not rank 0's
    for label in LABELS:
        name = f"predictions-{label}.json"
        assert json.loads((root / "run" / name).read_text()) == json.loads((tmp_path / "single" / name).read_text())
    mine, want = _tensors(root / "run"), _tensors(tmp_path / "single")
    assert mine.keys() == want.keys() and any("curlora_U" in k for k in want)
    assert any(v.abs().max() > 0 for k, v in want.items() if "curlora_U" in k)  # training moved U
    for k in want:
        torch.testing.assert_close(mine[k], want[k], rtol=0, atol=1e-5, msg=k)

    # output: rank 0 prints the run, its progress and its table; rank 1 no report, info line or progress bar
    assert "curlora sft" in ranks[0]["output"] and "curlora-4" in ranks[0]["output"]
    assert "training examples: kept" in ranks[0]["output"] and "%|" in ranks[0]["output"]
    for piece in ("curlora sft", "results:", "training examples", "Loaded", "%|"):
        assert piece not in ranks[1]["output"], (piece, ranks[1]["output"][-2000:])
    # files: rank 0 wrote the recipe's files; rank 1 only what the Trainer itself writes per process in a
    # checkpoint: its RNG state, rng_state_1.pth (torch.save writes from C++, unseen by audit hooks), after
    # making sure that the checkpoint folder exists (an os.mkdir the hook sees)
    written = "\n".join(ranks[0]["writes"])
    for piece in ("config.json", "results.json", "results.md", "predictions-none.json", "final"):
        assert piece in written, piece
    for entry in ranks[1]["writes"]:
        event, path = entry.split(" ", 1)
        rel = Path(path).relative_to(root / "run")
        assert rel.parts[0] == "runs" and rel.parts[2].startswith("checkpoint-"), entry
        assert (event == "os.mkdir" and len(rel.parts) == 3) or rel.name == "rng_state_1.pth", entry
    assert all((c / "rng_state_1.pth").is_file() for c in (root / "run" / "runs" / "curlora-4").glob("checkpoint-*"))
