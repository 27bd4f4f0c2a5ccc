"""`curlora info` and `curlora data`, the exact adapter sizes behind them, and the CLI's error path."""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import curlora
from curlora.cli import app
from curlora.models.info import (
    DEFAULT_RANKS,
    adapter_file_size,
    model_info,
    parse_ranks,
    safetensors_header,
    target_layers,
    trainable_params,
)
from curlora.testing import ARCHITECTURES, save_tiny_model, tiny_gpt2, tiny_llama

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
WIDE = {"COLUMNS": "200"}  # rich wraps to 80 columns when not on a terminal

MISTRAL_7B = {"architectures": ["MistralForCausalLM"], "torch_dtype": "bfloat16", **ARCHITECTURES["mistral-7b"]}

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), env=WIDE)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="module")
def mistral_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("configs") / "config.json"
    path.write_text(json.dumps(MISTRAL_7B), encoding="utf-8")
    return path


# -- curlora info ---------------------------------------------------------------------------------------------------


def test_info_on_a_model_folder(tiny_folder):
    result = invoke("info", str(tiny_folder))
    assert result.exit_code == 0, result.output
    out = result.stdout
    # 2 layers × q/k/v; hidden 64, 2 of 4 heads for k/v -> k/v are 32 × 64
    assert "model.layers.*.self_attn.q_proj" in out and "64 × 64" in out and "32 × 64" in out
    assert "6 × q_proj, k_proj, v_proj" in out
    assert "1,536" in out  # CURLoRA r=16: 6 · 256
    assert "10,240" in out  # LoRA r=16: 2 · 16 · ((64+64) + 2 · (64+32))
    for r in DEFAULT_RANKS:
        assert f"│ {r:>2} │" in out


def test_info_on_a_mistral_7b_config_needs_no_weights(mistral_config):
    result = invoke("info", "--config", str(mistral_config))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "mistral" in out and "32 / 8" in out and "32,000" in out
    assert "7,241,732,096" in out  # Mistral-7B's parameter count, from shapes on the meta device
    assert "24,576" in out  # CURLoRA r=16 on q/k/v: 32 layers · 3 · 16²
    assert "9,437,184" in out  # LoRA r=16: 32 · 16 · ((4096+4096) + 2 · (4096+1024))
    assert "4,096 × 4,096" in out and "1,024 × 4,096" in out


def test_info_json_parses(mistral_config):
    result = invoke("info", "--config", str(mistral_config), "--json", "--ranks", "16,4")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["architecture"]["total_params"] == 7_241_732_096
    assert data["architecture"]["kv_heads"] == 8 and data["architecture"]["tie_word_embeddings"] is False
    assert data["targets"]["count"] == 96 and data["targets"]["default"] is True
    assert [row["r"] for row in data["ranks"]] == [4, 16]
    r16 = data["ranks"][1]
    assert r16["curlora_params"] == 24_576 and r16["lora_params"] == 9_437_184
    assert r16["params_ratio"] == pytest.approx(384.0)
    assert r16["curlora_bytes"] < r16["lora_bytes"]


def test_info_targets_override(mistral_config):
    args = ("info", "--config", str(mistral_config), "--targets", "q_proj, down_proj,nope", "--ranks", "8")
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["targets"]["modules"] == ["q_proj", "down_proj", "nope"] and data["targets"]["default"] is False
    assert data["targets"]["unmatched"] == ["nope"]
    assert "nope match no layer" in invoke(*args).stdout
    shapes = {g["pattern"]: (g["out"], g["in"]) for g in data["targets"]["groups"]}
    assert shapes == {"model.layers.*.self_attn.q_proj": (4096, 4096), "model.layers.*.mlp.down_proj": (4096, 14336)}
    assert data["ranks"][0]["curlora_params"] == 64 * 64
    assert data["ranks"][0]["lora_params"] == 32 * 8 * (4096 + 4096 + 14336 + 4096)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["info"], "either a model"),
        (["info", "--config", "/nonexistent.json"], "does not exist"),
        (["info", "--config", "CONFIG", "--targets", "nope_proj"], "match no layer"),
        (["info", "--config", "CONFIG", "--targets", "embed_tokens"], "neither nn.Linear nor Conv1D"),
        (["info", "--config", "CONFIG", "--ranks", "4,x"], "positive integers"),
        (["info", "--config", "CONFIG", "--ranks", "0"], "positive integer"),
        (["data", "show", "--suite", "nope"], "unknown suite"),
    ],
)
def test_user_errors_print_one_line_and_exit_2(args, message, mistral_config):
    args = [str(mistral_config) if a == "CONFIG" else a for a in args]
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert "Traceback" not in result.output


def test_console_script_error_path_has_no_traceback():
    script = shutil.which("curlora", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    if script is None:
        pytest.skip("the curlora console script is not installed")
    proc = subprocess.run(
        [script, "info", "--config", "/nonexistent.json"], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: config file /nonexistent.json does not exist")


# -- the numbers: exact against real PEFT saves -------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("method", ["curlora", "lora"])
@pytest.mark.parametrize("r", [1, 4])
def test_adapter_size_equals_real_save_pretrained(tmp_path, arch, method, r):
    import peft

    model = {"llama": tiny_llama, "gpt2": tiny_gpt2}[arch]()
    info = model_info(model, ranks=[r])
    row = info["ranks"][0]
    if method == "curlora":
        config = curlora.CURLoRAConfig(r=r)
    else:
        config = curlora.lora_config(r, model_type=arch)
    peft_model = peft.get_peft_model(model, config)
    trainable, _ = peft_model.get_nb_trainable_parameters()
    peft_model.save_pretrained(tmp_path)
    saved = (tmp_path / "adapter_model.safetensors").read_bytes()

    assert row[f"{method}_params"] == trainable
    assert row[f"{method}_bytes"] == len(saved) == curlora.adapter_bytes(tmp_path)
    # not only the size: the header is the very one save_pretrained wrote
    layers = target_layers({"llama": tiny_llama, "gpt2": tiny_gpt2}[arch]())
    from curlora.models.info import adapter_tensors

    prefix, _ = safetensors_header(adapter_tensors(layers, method, r))
    assert saved[: len(prefix)] == prefix


def test_gpt2_conv1d_shapes_are_out_by_in():
    (group,) = model_info(tiny_gpt2(), ranks=[2])["targets"]["groups"]
    assert group["pattern"] == "transformer.h.*.attn.c_attn"
    assert (group["kind"], group["out"], group["in"], group["count"]) == ("Conv1D", 192, 64, 2)


def test_safetensors_header_matches_the_library():
    from safetensors.torch import save

    dtypes = {
        "float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16,
        "int64": torch.int64, "int32": torch.int32,
    }  # fmt: skip
    rng = random.Random(0)
    for _ in range(50):
        specs = [
            (f"m{rng.randrange(1000)}.t{i}", rng.choice(list(dtypes)), tuple(rng.randrange(1, 30) for _ in range(2)))
            for i in range(rng.randrange(1, 20))
        ]
        metadata = rng.choice([None, {"format": "pt"}])
        data = save({n: torch.zeros(s, dtype=dtypes[d]) for n, d, s in specs}, metadata=metadata)
        prefix, nbytes = safetensors_header(specs, metadata)
        assert data[: len(prefix)] == prefix
        assert len(data) == len(prefix) + nbytes
        assert struct.unpack("<Q", prefix[:8])[0] % 8 == 0


def test_counting_rules():
    layers = [{"name": "a.0.q", "kind": "Linear", "out": 10, "in": 20}, {"name": "a.1.q", "kind": "Linear",
              "out": 10, "in": 20}]  # fmt: skip
    assert trainable_params(layers, "curlora", 3) == 2 * 9
    assert trainable_params(layers, "lora", 3) == 2 * 3 * 30
    # the fingerprint is a fixed 160 bytes per layer: CURLoRA's file is smaller from layers a little wider than these
    wide = [{**layer, "out": 64, "in": 32} for layer in layers]
    assert adapter_file_size(wide, "curlora", 3) < adapter_file_size(wide, "lora", 3)
    assert parse_ranks(None) == list(DEFAULT_RANKS)
    assert parse_ranks("16, 4,4") == [4, 16]


# -- curlora data -----------------------------------------------------------------------------------------------


def test_data_show_builtin_from_a_folder():
    vader = SHARED_DATA / "vader"
    if not vader.is_dir():
        pytest.skip(f"{vader} is absent")
    result = invoke("data", "show", "--data-dir", str(vader))
    assert result.exit_code == 0, result.output
    out = result.stdout
    for name in ("movies", "source", "tweets", "nyt-editorials", "product review: "):
        assert name in out
    data = json.loads(invoke("data", "show", "--data-dir", str(vader), "--json").stdout)
    assert [t["name"] for t in data["tasks"]] == ["movies", "source", "tweets"]
    assert data["tasks"][0]["eval_label_counts"] == {"negative": 250, "positive": 250}
    assert data["perplexity"]["chars"] > 0


def test_data_show_paper_suite():
    if not (SHARED_DATA / "glue").is_dir():
        pytest.skip(f"{SHARED_DATA} has no GLUE data")
    result = invoke("data", "show", "--suite", "paper", "--data-dir", str(SHARED_DATA))
    assert result.exit_code == 0, result.output
    out = result.stdout
    for name in ("mrpc", "sst2", "sentiment140", "pair", "paraphrase", "wikitext-2-test"):
        assert name in out
    assert "872" in out  # SST-2 dev set size


# -- the real built-in model ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_info_on_the_builtin_model():
    result = invoke("info", "smollm2-135m")
    assert result.exit_code == 0, result.output
    assert "23,040" in result.stdout  # 30 layers · 3 · 16²
    assert "134,515,008" in result.stdout
    data = json.loads(invoke("info", "smollm2-135m", "--json").stdout)
    r16 = next(row for row in data["ranks"] if row["r"] == 16)
    assert r16["curlora_params"] == 23_040
    assert r16["curlora_bytes"] < 200_000
    assert data["architecture"]["tie_word_embeddings"] is True


def test_study_merge_checks_every_file_before_writing(tmp_path):
    study = Path(__file__).resolve().parents[2] / "docs" / "study2" / "runs" / "continual.json"
    if not study.exists():
        pytest.skip("docs/study2/runs/continual.json is not in this checkout")
    out = tmp_path / "merged.json"
    cut = tmp_path / "cut.json"
    cut.write_bytes(study.read_bytes()[:5000])  # a copy cut short, as a killed transfer leaves it
    result = runner.invoke(app, ["study", "merge", str(study), str(cut), "--out", str(out)])
    assert result.exit_code != 0 and "cut.json" in result.output and not out.exists()
    broken = json.loads(study.read_text())
    broken["settings"][0]["runs"][0]["acc"][0][0] = 2.0  # an accuracy no evaluation can give
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(broken))
    result = runner.invoke(app, ["study", "merge", str(study), str(bad), "--out", str(out)])
    assert result.exit_code != 0 and "bad.json" in result.output and not out.exists()
    lpft = study.with_name("continual-lpft.json")
    result = runner.invoke(app, ["study", "merge", str(study), str(lpft), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sum(len(s["runs"]) for s in json.loads(out.read_text())["settings"]) == 190  # docs/study2/README.md
