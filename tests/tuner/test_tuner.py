"""CURLoRA through the PEFT API on tiny random-init Llama and GPT-2 models."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers.pytorch_utils import Conv1D

import curlora
from curlora import CURLoRAConfig, CurloraError, CURLoRALayer
from curlora.testing import tiny_gpt2, tiny_llama

ARCHS = {"llama": tiny_llama, "gpt2": tiny_gpt2}


def _ids(vocab=100, shape=(2, 9), seed=0):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def _layers(model):
    return [m for m in model.modules() if isinstance(m, CURLoRALayer)]


def _randomize_u(model, adapter="default", seed=0):
    g = torch.Generator().manual_seed(seed)
    for layer in _layers(model):
        u = layer.curlora_U[adapter]
        u.data = torch.randn(u.shape, generator=g).to(u.dtype) * 0.5


@pytest.mark.parametrize("arch", ARCHS)
def test_zero_init_is_the_base_model_and_only_u_trains(arch):
    base = ARCHS[arch]()
    ids = _ids()
    with torch.no_grad():
        ref = base(ids).logits
    model = get_peft_model(base, CURLoRAConfig(r=4))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith("curlora_U.default") for n in trainable)
    n_layers = base.config.num_hidden_layers * (1 if arch == "gpt2" else 3)
    assert len(_layers(model)) == n_layers
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == n_layers * 16


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_equals_dense_formula_and_grads_reach_u_only(arch):
    model = get_peft_model(ARCHS[arch](), CURLoRAConfig(r=4, alpha=1.5))
    _randomize_u(model)
    layer = _layers(model)[0]
    base = layer.get_base_layer()
    w = base.weight.T if isinstance(base, Conv1D) else base.weight  # out × in
    c = w[:, layer.curlora_cols["default"]]
    r = w[layer.curlora_rows["default"], :]
    u = layer.curlora_U["default"]
    x = torch.randn(3, 5, w.shape[1])
    expected = x @ (w + 1.5 * c @ u @ r).T
    if base.bias is not None:
        expected = expected + base.bias
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)

    model.train()
    model(_ids()).logits.square().mean().backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


@pytest.mark.parametrize("arch", ARCHS)
def test_delta_weight_orientation_and_merge_round_trip(arch):
    model = get_peft_model(ARCHS[arch](), CURLoRAConfig(r=4))
    _randomize_u(model)
    layer = _layers(model)[0]
    assert layer.get_delta_weight("default").shape == layer.get_base_layer().weight.shape
    ids = _ids()
    w0 = layer.get_base_layer().weight.detach().clone()
    with torch.no_grad():
        unmerged = model(ids).logits
        model.merge_adapter()
        merged = model(ids).logits
        model.unmerge_adapter()
        again = model(ids).logits
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(again, unmerged, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.get_base_layer().weight, w0, rtol=0, atol=1e-6)
    unloaded = model.merge_and_unload()
    assert not any(isinstance(m, CURLoRALayer) for m in unloaded.modules())  # the module, not its logits
    with torch.no_grad():
        plain = unloaded(ids).logits
    torch.testing.assert_close(plain, unmerged, rtol=1e-4, atol=1e-5)


def test_disable_adapter_unload_and_named_adapters():
    model = get_peft_model(tiny_llama(), CURLoRAConfig(r=4), adapter_name="a")
    _randomize_u(model, "a", seed=1)
    model.add_adapter("b", CURLoRAConfig(r=2, seed=5))
    _randomize_u(model, "b", seed=2)
    ids = _ids()
    with torch.no_grad():
        out_a = model(ids).logits
        model.set_adapter("b")
        out_b = model(ids).logits
        with model.disable_adapter():
            out_base = model(ids).logits
        base = model.unload()(ids).logits
    assert not torch.allclose(out_a, out_b)
    torch.testing.assert_close(out_base, base)
    assert not torch.allclose(out_a, base)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes_and_buffers_follow_to(dtype):
    model = get_peft_model(tiny_llama().to(dtype), CURLoRAConfig(r=4))
    layer = _layers(model)[0]
    assert layer.curlora_U["default"].dtype == torch.float32  # U stays fp32 by default
    assert layer.curlora_C["default"].dtype == dtype and layer.curlora_R["default"].dtype == dtype
    _randomize_u(model)
    with torch.no_grad():
        out = model(_ids()).logits
        assert out.dtype == dtype and torch.isfinite(out).all()
        model.merge_adapter()
        model.unmerge_adapter()
    model.half()
    assert layer.curlora_C["default"].dtype == torch.float16
    # the fingerprint survives .half() (it is stored as int64 bits)
    assert layer.curlora_fingerprint["default"].dtype == torch.int64
    bf = get_peft_model(tiny_llama(), CURLoRAConfig(r=4, u_dtype="bfloat16"))
    assert _layers(bf)[0].curlora_U["default"].dtype == torch.bfloat16


def _save(model, path):
    model.save_pretrained(path)
    return Path(path)


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_in_fresh_process_gives_identical_outputs(arch, tmp_path):
    model = get_peft_model(ARCHS[arch](seed=3), CURLoRAConfig(r=4, seed=11))
    _randomize_u(model)
    ids = _ids()
    with torch.no_grad():
        expected = model(ids).logits
    adapter = _save(model, tmp_path / "adapter")
    torch.save(ids, tmp_path / "ids.pt")
    torch.save(expected, tmp_path / "expected.pt")
    # the file holds U, indices and fingerprint, never C or R
    from safetensors import safe_open

    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        kinds = {k.rsplit(".", 1)[-1] for k in f.keys()}
    assert kinds == {"curlora_U", "curlora_cols", "curlora_rows", "curlora_fingerprint"}
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "CURLORA"
    script = textwrap.dedent(
        f"""
        import torch, curlora
        from curlora.testing import {ARCHS[arch].__name__} as make
        from peft import PeftModel
        model = PeftModel.from_pretrained(make(seed=3), {str(adapter)!r})
        ids = torch.load({str(tmp_path / "ids.pt")!r})
        with torch.no_grad():
            out = model(ids).logits
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        assert torch.equal(out, expected), (out - expected).abs().max()
        print("OK")
        """
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-2000:]


def test_loading_onto_a_different_base_model_fails_clearly(tmp_path):
    model = get_peft_model(tiny_llama(seed=3), CURLoRAConfig(r=4))
    adapter = _save(model, tmp_path / "adapter")
    with pytest.raises(CurloraError, match="does not match this base model"):
        PeftModel.from_pretrained(tiny_llama(seed=4), str(adapter))
    # same weights: loads fine, also through the checked loader
    loaded = curlora.load_adapter(tiny_llama(seed=3), adapter)
    assert len(_layers(loaded)) == len(_layers(model))


def test_truncated_or_corrupted_adapter_file(tmp_path):
    adapter = _save(get_peft_model(tiny_llama(), CURLoRAConfig(r=4)), tmp_path / "adapter")
    weights = adapter / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CurloraError, match="truncated or corrupted"):
        curlora.load_adapter(tiny_llama(), adapter)
    weights.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CurloraError, match="truncated or corrupted"):
        curlora.load_adapter(tiny_llama(), adapter)
    (adapter / "adapter_config.json").write_text("{not json")
    with pytest.raises(CurloraError, match="not valid JSON"):
        curlora.check_adapter_dir(adapter)
    with pytest.raises(CurloraError, match="missing"):
        curlora.check_adapter_dir(tmp_path / "nowhere")


def test_config_errors():
    with pytest.raises(CurloraError, match="r must be a positive integer"):
        CURLoRAConfig(r=0)
    with pytest.raises(CurloraError, match="unknown sampling strategy"):
        CURLoRAConfig(sampling="random")
    with pytest.raises(CurloraError, match="rank r=999"):
        get_peft_model(tiny_llama(), CURLoRAConfig(r=999))
    with pytest.raises(ValueError, match="not found in the base model"):
        get_peft_model(tiny_llama(), CURLoRAConfig(r=2, target_modules=["no_such_proj"]))


def test_weight_with_nan_or_all_zero_fails_clearly():
    model = tiny_llama()
    model.model.layers[0].self_attn.q_proj.weight.data[0, 0] = float("nan")
    with pytest.raises(CurloraError, match="NaN or Inf"):
        get_peft_model(model, CURLoRAConfig(r=2))
    model = tiny_llama()
    model.model.layers[1].self_attn.k_proj.weight.data.zero_()
    with pytest.raises(CurloraError, match="layers.1.self_attn.k_proj.*non-zero norm"):
        get_peft_model(model, CURLoRAConfig(r=2))


def test_default_targets_and_lora_baseline_match():
    lora = get_peft_model(tiny_llama(), curlora.lora_config(r=4, alpha=1.0, model_type="llama"))
    cur_model = get_peft_model(tiny_llama(), CURLoRAConfig(r=4))
    lora_targets = {n for n, m in lora.named_modules() if hasattr(m, "lora_A")}
    cur_targets = {n for n, m in cur_model.named_modules() if isinstance(m, CURLoRALayer)}
    assert lora_targets == cur_targets
    assert lora.peft_config["default"].lora_alpha == 4.0  # alpha · r: no division by r, as in the original
    gpt = get_peft_model(tiny_gpt2(), CURLoRAConfig(r=2))
    assert {n.rsplit(".", 1)[-1] for n, m in gpt.named_modules() if isinstance(m, CURLoRALayer)} == {"c_attn"}


def test_delta_norm_ratios():
    model = get_peft_model(tiny_llama(), CURLoRAConfig(r=4))
    assert all(r == 0 for r in curlora.delta_norm_ratios(model))
    _randomize_u(model)
    ratios = curlora.delta_norm_ratios(model)
    assert len(ratios) == 6 and all(r > 0 for r in ratios)


PY_SCRIPT = Path(__file__).resolve().parents[2] / "src" / "curlora" / "tuner" / "enum_ext.py"


@pytest.mark.parametrize("version", ["3.10", "3.11", "3.12", "3.13"])
def test_enum_extension_on_each_python(version):
    """PeftType is a closed enum: our extension must work on every supported Python."""
    import shutil

    candidates = sorted(str(p) for p in Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}"))
    candidates.append(shutil.which(f"python{version}"))

    def works(exe):  # a pyenv shim for a version that is not selected exits 127
        return exe and subprocess.run([exe, "-c", "pass"], capture_output=True).returncode == 0

    exe = next((c for c in candidates if works(c)), None)
    if exe is None:
        pytest.skip(f"no python{version} on this machine")
    script = textwrap.dedent(
        f"""
        import enum, importlib.util, json
        spec = importlib.util.spec_from_file_location("enum_ext", {str(PY_SCRIPT)!r})
        mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
        class PeftType(str, enum.Enum):
            LORA = "LORA"
            VERA = "VERA"
        m = mod.extend_str_enum(PeftType, "CURLORA")
        assert mod.extend_str_enum(PeftType, "CURLORA") is m
        assert PeftType.CURLORA is m and PeftType("CURLORA") is m and PeftType["CURLORA"] is m
        assert m == "CURLORA" and isinstance(m, PeftType) and m in list(PeftType) and len(PeftType) == 3
        assert {{m: 1}}["CURLORA"] == 1 and json.dumps(m) == '"CURLORA"'
        print("OK")
        """
    )
    res = subprocess.run([exe, "-c", script], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr


def test_peft_type_registered_in_this_interpreter():
    from peft.utils.peft_types import PeftType

    assert PeftType("CURLORA") is curlora.CURLORA_PEFT_TYPE
    import importlib

    importlib.reload(importlib.import_module("curlora.tuner"))  # registration is idempotent
    assert curlora.CURLoRAConfig(r=2).peft_type == "CURLORA"


@pytest.mark.slow
def test_builtin_model_adapter_is_small_and_reloads(tmp_path):
    """SmolLM2-135M, q/k/v, r=16: 30 × 3 × 256 trainable, a file under 200 KB, identical outputs after reload."""
    model, _ = curlora.load_model("smollm2-135m")
    peft_model = get_peft_model(model, CURLoRAConfig(r=16))
    assert sum(p.numel() for p in peft_model.parameters() if p.requires_grad) == 30 * 3 * 256
    _randomize_u(peft_model)
    ids = _ids(vocab=49152, shape=(1, 12))
    with torch.no_grad():
        expected = peft_model(ids).logits
    peft_model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size < 200_000
    fresh, _ = curlora.load_model("smollm2-135m")
    with torch.no_grad():
        got = curlora.load_adapter(fresh, tmp_path / "adapter")(ids).logits
    assert torch.equal(got, expected)


def test_reuse_base_output_is_saved_and_an_older_config_without_it_loads(tmp_path):
    from peft import PeftModel

    from curlora.tuner.layer import CURLoRALinear

    model = get_peft_model(tiny_llama(seed=3), CURLoRAConfig(r=4, reuse_base_output=False))
    adapter = _save(model, tmp_path / "adapter")
    cfg_path = adapter / "adapter_config.json"
    assert json.loads(cfg_path.read_text())["reuse_base_output"] is False

    def flags(folder):
        loaded = PeftModel.from_pretrained(tiny_llama(seed=3), str(folder))
        layers = [m for m in loaded.modules() if isinstance(m, CURLoRALinear)]
        return {v for m in layers for v in m.curlora_reuse_base_output.values()}

    assert flags(adapter) == {False}
    # an adapter saved before the option existed: the key is absent, the default (True) applies
    cfg = json.loads(cfg_path.read_text())
    del cfg["reuse_base_output"]
    cfg_path.write_text(json.dumps(cfg))
    assert flags(adapter) == {True}


def test_qkv_of_each_block_are_linked_into_one_group_after_injection_and_loading(tmp_path):
    """Each block's adapted q/k/v share one group (`curlora.tuner.group`); a block without all three has none.
    Its numbers equal the per-layer ones (tests/test_eager_group.py, test_kernels.check_groups)."""
    from curlora.tuner.layer import CURLoRALinear

    def groups(model):
        layers = [m for m in model.modules() if isinstance(m, CURLoRALinear)]
        return layers, {id(m._shared_input_group) for m in layers}

    model = get_peft_model(tiny_llama(num_layers=2), CURLoRAConfig(r=4))
    layers, ids = groups(model)
    assert len(layers) == 6 and len(ids) == 2 and None not in {m._shared_input_group for m in layers}
    for block in range(2):
        q, k, v = layers[3 * block : 3 * block + 3]
        assert q._shared_input_group is k._shared_input_group is v._shared_input_group
        assert q._shared_input_group.members == (q, k, v)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_llama(num_layers=2), tmp_path)
    assert len(groups(loaded)[1]) == 2
    q_and_v = get_peft_model(tiny_llama(num_layers=2), CURLoRAConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert {m._shared_input_group for m in groups(q_and_v)[0]} == {None}
