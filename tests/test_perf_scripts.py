"""The benchmark scripts in perf/ still run end to end (a tiny CPU configuration each): their numbers come from GPU
runs, but a script that no longer starts is only found out on the GPU machine, where its time is scarce."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, str(ROOT / "perf" / name), *args], cwd=ROOT, env=env, timeout=timeout,
                          capture_output=True, text=True)


def test_trainer_bench_writes_a_valid_report(tmp_path):
    out = tmp_path / "trainer.json"
    proc = run_script("trainer_bench.py", "--device", "cpu", "--model", "tiny", "--modes", "eager", "--methods",
                      "curlora,head_only", "--steps", "4", "--warmup", "1", "--rounds", "1", "--threads", "1",
                      "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert [r["method"] for r in report["runs"]] == ["curlora", "head_only"]
    assert all(math.isfinite(r["steps_per_s"]) and r["steps_per_s"] > 0 for r in report["runs"])
    assert all(r["graphs_compiled"] == 0 and r["graph_breaks"] == 0 for r in report["runs"])  # eager: none
    assert report["summary"]["head_only/eager"]["vs_head_only"] == 1.0


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
def test_quant_bench_runs_its_cpu_smoke_configuration(tmp_path):
    out = tmp_path / "quant.json"
    proc = run_script("quant_bench.py", "--device", "cpu", "--model", "smollm2-135m", "--layers", "1", "--seq", "16",
                      "--batch", "1", "--steps", "1", "--warmup", "1", "--bases", "4bit", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"4bit/floor", "4bit/lora", "4bit/curlora"}
    assert all("error" not in r and r["step_s"] > 0 for r in report["results"].values())
    assert {row["verdict"] for row in report["targets"]} <= {"PASS", "FAIL", "n/a"}
