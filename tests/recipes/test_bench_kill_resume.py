"""`curlora bench` killed with SIGKILL before, inside and after a LoRA run, then rerun, gives the numbers and saved
tensors of an uninterrupted run and of each method run alone: bit for bit on the CPU.

Subprocesses, not in-process interruption: only a fresh process starts from a fresh global RNG state, which is how
users resume (and what hid the LoRA init being drawn from whatever the process had consumed before)."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from curlora.testing import save_tiny_model

ROOT = Path(__file__).resolve().parents[2]
METHODS = ["curlora-2", "lora-2", "head_only", "full"]
TIMING = {"train_s", "eval_s", "wall_s", "wall_s_total", "created"}
WORDS = "alpha beta gamma delta river stone cloud paper green quiet light storm".split()


def _paper_folder(root: Path) -> Path:
    """A tiny GLUE-layout folder (MRPC, SST-2, Sentiment140, WikiText-2) with a few records per task."""
    rng = random.Random(0)

    def words(n):
        return " ".join(rng.choice(WORDS) for _ in range(n))

    def write(rel, text, encoding="utf-8"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding=encoding)

    def mrpc():
        return "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n" + "".join(
            f"{k % 2}\t{k}\t{k + 100}\t{(a := words(5))}\t{a if k % 2 else words(5)}\n" for k in range(16)
        )

    def sst():
        return "sentence\tlabel\n" + "".join(f"{words(4)} {'good' if k % 2 else 'bad'}\t{k % 2}\n" for k in range(16))

    def s140():
        return "".join(f'{4 * (k % 2)},"{words(4)} {"yes" if k % 2 else "no"}"\n' for k in range(16))

    for split in ("train", "dev"):  # fresh random texts per split: no training text is also an eval text
        write(f"glue/MRPC/{split}.tsv", mrpc())
        write(f"glue/SST-2/{split}.tsv", sst())
    write("sentiment140/testdata.manual.2009.06.14.csv", s140(), "latin-1")
    write("sentiment140/training.1600000.processed.noemoticon.csv", s140(), "latin-1")
    write("wikitext-2-raw/wiki.test.raw", "".join(f" {words(12)} .\n" for _ in range(20)))
    return root


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    base = tmp_path_factory.mktemp("kill")
    return save_tiny_model(base / "model"), _paper_folder(base / "data")


def _cmd(model: Path, data: Path, out: Path, methods: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "curlora", "bench", "--model", str(model), "--suite", "paper", "--data-dir", str(data),
        "--methods", ",".join(methods), "--seeds", "0", "--n-train", "8", "--n-eval", "8", "--batch-size", "4",
        "--eval-batch-size", "8", "--lr", "5e-3", "--max-length", "24", "--ppl-max-length", "32",
        "--ppl-stride", "32", "--ppl-max-tokens", "96", "--device", "cpu", "--out", str(out),
    ]  # fmt: skip


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def _run(cmd) -> None:
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def _run_until(cmd, marker: Path) -> None:
    """Start the bench and SIGKILL it as soon as `marker` exists (the process gets no chance to clean up)."""
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert proc.poll() is None, f"the bench ended (code {proc.returncode}) before {marker} appeared"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()


def _numbers(out: Path, label: str) -> dict:
    """Every number of one run (timings left out) and every tensor it saved."""
    results = json.loads((out / "results.json").read_text())
    (run,) = [r for r in results["runs"] if r["label"] == label]
    assert run["complete"]
    run = {k: v for k, v in run.items() if k not in TIMING}
    run["stages"] = [{k: v for k, v in s.items() if k not in TIMING} for s in run["stages"]]
    tensors = {}
    for f in sorted((out / "runs" / label).rglob("*.safetensors")):
        for key, value in load_file(str(f)).items():
            tensors[f"{f.relative_to(out / 'runs' / label)}:{key}"] = value
    return {"run": run, "tensors": tensors}


def _assert_same(a: dict, b: dict, what: str) -> None:
    assert a["run"] == b["run"], f"{what}: results differ"
    assert a["tensors"].keys() == b["tensors"].keys(), what
    for key, value in a["tensors"].items():
        other = b["tensors"][key]
        assert value.dtype == other.dtype and value.shape == other.shape, f"{what}: {key}"
        assert value.view(-1).view_as(value).equal(other), f"{what}: {key} differs"


def test_killed_and_resumed_bench_equals_uninterrupted_and_solo_runs(inputs, tmp_path):
    model, data = inputs
    whole = tmp_path / "whole"
    _run(_cmd(model, data, whole, METHODS))

    killed = tmp_path / "killed"
    cmd = _cmd(model, data, killed, METHODS)
    lora = killed / "runs" / "lora-2" / "seed-0"
    _run_until(cmd, killed / "runs" / "curlora-2" / "seed-0" / "run.json")  # before the LoRA run
    _run_until(cmd, lora / "stage-0-mrpc" / "stage.json")  # inside it: one stage of three written
    _run_until(cmd, lora / "run.json")  # after it
    _run(cmd)
    assert not [p for p in killed.rglob(".*") if p.name.endswith((".tmp", ".old"))], "leftovers were not removed"

    # each method alone, one after another in one process: a process history unlike either run above
    driver = "; ".join(
        [
            "import sys",
            "from curlora.cli import app",
            "from typer.testing import CliRunner",
            "runner = CliRunner()",
            *[
                f"r = runner.invoke(app, {_cmd(model, data, tmp_path / ('solo-' + m), [m])[3:]!r}); "
                "sys.exit(r.output) if r.exit_code else None"
                for m in reversed(METHODS)
            ],
        ]
    )
    _run([sys.executable, "-c", driver])

    for label in METHODS:
        reference = _numbers(whole, label)
        _assert_same(reference, _numbers(killed, label), f"{label} killed and resumed")
        _assert_same(reference, _numbers(tmp_path / f"solo-{label}", label), f"{label} run alone")
