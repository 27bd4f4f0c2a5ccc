"""CURLoRA on bitsandbytes bases (4-bit nf4/fp4 ± double quantization, 8-bit LLM.int8()), on the CPU backend."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

pytest.importorskip(
    "bitsandbytes", reason="bitsandbytes is not installed (pip install 'curlora[quant]'); its CPU backend runs these"
)

import peft  # noqa: E402
from transformers import AutoModelForCausalLM, BitsAndBytesConfig  # noqa: E402

import curlora  # noqa: E402
from curlora.errors import CurloraError  # noqa: E402
from curlora.metrics import delta_norm_ratios  # noqa: E402
from curlora.testing import save_tiny_model, tiny_llama, tiny_tokenizer  # noqa: E402
from curlora.tuner.bnb import CURLoRALinear4bit, CURLoRALinear8bitLt, dequantize_4bit  # noqa: E402

VARIANTS = {
    "nf4": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
    "nf4-dq": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True),
    "fp4": dict(load_in_4bit=True, bnb_4bit_quant_type="fp4"),
    "fp4-dq": dict(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=True),
    "int8": dict(load_in_8bit=True),
}
IDS = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


def load(folder, kind: str, compute=torch.float32):
    if kind == "none":
        return AutoModelForCausalLM.from_pretrained(folder).eval()
    extra = {} if kind == "int8" else {"bnb_4bit_compute_dtype": compute}
    qc = BitsAndBytesConfig(**VARIANTS[kind], **extra)
    return AutoModelForCausalLM.from_pretrained(folder, quantization_config=qc, device_map={"": "cpu"}).eval()


def adapted(model, r=4, **kw):
    model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return peft.get_peft_model(model, curlora.CURLoRAConfig(r=r, seed=3, **kw))


def layers(model):
    return [m for m in model.modules() if isinstance(m, curlora.tuner.layer.CURLoRALayer)]


def randomize_u(model, scale=0.5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in layers(model):
            for u in layer.curlora_U.values():
                u.copy_(torch.randn(u.shape, generator=gen) * scale)


def packed(model):
    return [layer.get_base_layer().weight.data.clone() for layer in layers(model)]


@pytest.mark.parametrize("kind", list(VARIANTS))
def test_wraps_and_trains_a_step(folder, kind):
    model = adapted(load(folder, kind))
    expected = CURLoRALinear8bitLt if kind == "int8" else CURLoRALinear4bit
    assert len(layers(model)) == 6 and all(type(m) is expected for m in layers(model))
    assert model.peft_config["default"].base_quantization == kind
    layer = layers(model)[0]
    assert layer.curlora_C["default"].dtype == torch.float32 and layer.curlora_C["default"].is_floating_point()
    before_u = [m.curlora_U["default"].detach().clone() for m in layers(model)]
    before_w = packed(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == 6 * 4 * 4  # U alone
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    randomize_u(model, 0.01)  # U = 0 gives C a zero gradient path; any U trains
    loss = model(IDS, labels=IDS).loss
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert all(not torch.equal(m.curlora_U["default"], u) for m, u in zip(layers(model), before_u, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(before_w, packed(model), strict=True))  # the base stays frozen
    assert all(r > 0 for r in delta_norm_ratios(model))


@pytest.mark.parametrize("kind", ["nf4-dq", "int8"])
def test_delta_norm_of_peft_lora_divides_by_the_dequantized_weight(folder, kind):
    # PEFT's LoRA on a bitsandbytes layer has no dense_weight: the packed integers' norm would make any update ~0
    model = load(folder, kind)
    model = peft.get_peft_model(model, curlora.lora_config(4, 1.0, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    lora = [m for m in model.modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    base = lora[0].get_base_layer()
    dense = dequantize_4bit(base.weight) if kind != "int8" else curlora.tuner.bnb.dequantize_8bit(base)
    want = float(lora[0].get_delta_weight("default").float().norm() / dense.float().norm())
    got = delta_norm_ratios(model)
    assert len(got) == len(lora) and got[0] == pytest.approx(want, rel=1e-5)
    assert min(got) > 1e-3  # the packed-weight norm gave ~1e-5 here


@pytest.mark.parametrize("kind", ["nf4", "fp4-dq"])
@pytest.mark.parametrize("compute", [torch.float32, torch.bfloat16])
def test_4bit_reads_x_r_off_the_base_output(folder, kind, compute):
    model = adapted(load(folder, kind, compute))
    randomize_u(model)
    layer = layers(model)[0]
    base = layer.get_base_layer()
    c, r, u = layer.curlora_C["default"], layer.curlora_R["default"], layer.curlora_U["default"]
    assert c.dtype == compute and r.dtype == compute
    # C and R are the dequantized weight's slices, as the layer multiplies with it
    dense = dequantize_4bit(base.weight).to(compute)
    assert torch.equal(r, dense[layer.curlora_rows["default"]])
    x = torch.randn(2, 5, base.in_features, generator=torch.Generator().manual_seed(1)).to(compute)
    with torch.no_grad():
        y = base(x)
        direct = x @ r.t()
        from_output = y[..., layer.curlora_rows["default"]]
        eps = torch.finfo(compute).eps
        assert (from_output - direct).abs().max() <= 4 * eps * direct.abs().max()
        assert layer._can_reuse_base_output("default", y)
        expected = y.float() + (direct.float() @ u.float().t()) @ c.float().t()
        assert torch.allclose(layer(x).float(), expected, rtol=8 * eps, atol=8 * eps * expected.abs().max())


def test_8bit_computes_x_r_from_x(folder):
    model = adapted(load(folder, "int8"))
    randomize_u(model)
    layer = layers(model)[0]
    c, r, u = layer.curlora_C["default"], layer.curlora_R["default"], layer.curlora_U["default"]
    x = torch.randn(2, 5, layer.in_features, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = layer.get_base_layer()(x)
        direct = x @ r.t()
        # LLM.int8() rounds x to int8 too: the base output's rows are not x·Rᵀ, so that path stays off
        rel = (y[..., layer.curlora_rows["default"]] - direct).abs().max() / direct.abs().max()
        assert rel > 1e-4
        assert not layer._can_reuse_base_output("default", y)
        assert torch.allclose(layer(x), y + direct @ u.t() @ c.t(), atol=1e-5)


@pytest.mark.parametrize("kind", ["nf4-dq", "int8"])
def test_save_and_load_same_base(folder, kind, tmp_path):
    model = adapted(load(folder, kind))
    randomize_u(model)
    with torch.no_grad():
        expected = model(IDS).logits
    model.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["base_quantization"] == kind
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*quantized as.*")  # same quantization: no warning
        loaded = peft.PeftModel.from_pretrained(load(folder, kind), tmp_path / "adapter")
    with torch.no_grad():
        assert torch.allclose(loaded(IDS).logits, expected, atol=1e-5)


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_merge_requantizes_with_a_warning_and_unmerge_restores_within_tolerance(folder, kind):
    model = adapted(load(folder, kind))
    randomize_u(model, 2.0)
    with torch.no_grad():
        with model.disable_adapter():
            base_logits = model(IDS).logits
        adapted_logits = model(IDS).logits
        effect = (adapted_logits - base_logits).abs().max()
        assert effect > 1e-3
        with pytest.warns(UserWarning, match="re-quantizes"):
            model.merge_adapter()
        merged = model(IDS).logits
        with pytest.warns(UserWarning, match="re-quantizes"):
            model.unmerge_adapter()
        unmerged = model(IDS).logits
    # merging into a quantized weight adds its rounding to the adapter's update: within a few times the
    # adapter's own effect on this tiny model (docs/QUANTIZED.md), and finite
    assert torch.isfinite(merged).all()
    assert (merged - adapted_logits).abs().max() < 3 * effect
    assert (unmerged - adapted_logits).abs().max() < 3 * effect
    with pytest.warns(UserWarning, match="re-quantizes"):
        plain = model.merge_and_unload()
    expected_type = "Linear8bitLt" if kind == "int8" else "Linear4bit"
    assert type(plain.model.layers[0].self_attn.q_proj).__name__ == expected_type


@pytest.mark.parametrize(("trained_on", "loaded_on"), [("none", "nf4-dq"), ("nf4-dq", "none"), ("none", "int8")])
def test_adapter_across_quantizations_loads_with_a_warning(folder, tmp_path, trained_on, loaded_on):
    model = adapted(load(folder, trained_on))
    randomize_u(model)
    model.save_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        reference = model(IDS).logits
    with pytest.warns(UserWarning, match=f"quantized as '{trained_on}'.*quantized as '{loaded_on}'"):
        loaded = peft.PeftModel.from_pretrained(load(folder, loaded_on), tmp_path / "adapter")
    assert loaded.peft_config["default"].base_quantization == loaded_on  # saved again, it belongs to this base
    with torch.no_grad():
        out = loaded(IDS).logits
    assert torch.isfinite(out).all() and (out - reference).abs().max() < 0.5 * reference.abs().max()
    # once re-saved from this base, it loads onto it again without a warning and with the strict check
    loaded.save_pretrained(tmp_path / "again")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*quantized as.*")
        peft.PeftModel.from_pretrained(load(folder, loaded_on), tmp_path / "again")


def test_wrong_base_is_refused_even_across_quantizations(folder, tmp_path):
    model = adapted(load(folder, "none"))
    model.save_pretrained(tmp_path / "adapter")
    other = tmp_path / "other"
    scaled = tiny_llama()
    with torch.no_grad():
        for name, p in scaled.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
                p.mul_(1.5)
    scaled.save_pretrained(other)
    tiny_tokenizer().save_pretrained(other)
    with pytest.warns(UserWarning, match="quantized as"), pytest.raises(CurloraError, match="does not match"):
        peft.PeftModel.from_pretrained(load(other, "nf4"), tmp_path / "adapter")


def test_load_model_quantize_and_bad_inputs(folder, tmp_path):
    model, _ = curlora.load_model(folder, quantize="4bit")
    q = model.model.layers[0].self_attn.q_proj
    assert type(q).__name__ == "Linear4bit" and q.weight.quant_state.nested and q.weight.quant_type == "nf4"
    model8, _ = curlora.load_model(folder, quantize="8bit")
    assert type(model8.model.layers[0].self_attn.q_proj).__name__ == "Linear8bitLt"
    with pytest.raises(CurloraError, match="'3bit' is not supported; choose 4bit or 8bit"):
        curlora.load_model(folder, quantize="3bit")
    model8.save_pretrained(tmp_path / "int8")
    tiny_tokenizer().save_pretrained(tmp_path / "int8")
    with pytest.raises(CurloraError, match="already quantized \\(bitsandbytes\\)"):
        curlora.load_model(tmp_path / "int8", quantize="4bit")
    with pytest.raises(CurloraError, match="r must be|rank|larger"):
        adapted(load(folder, "nf4"), r=100)


def test_unknown_quantized_layer_type_is_named():
    class Linear3bit(nn.Linear):  # stores integers, like a quantized layer the tuner does not know
        def __init__(self):
            super().__init__(64, 64, bias=False)
            self.weight = nn.Parameter(torch.zeros(64, 64, dtype=torch.int8), requires_grad=False)

    model = tiny_llama()
    model.model.layers[0].self_attn.q_proj = Linear3bit()
    with pytest.raises(CurloraError, match="Linear3bit.*bitsandbytes Linear4bit/Linear8bitLt"):
        peft.get_peft_model(model, curlora.CURLoRAConfig(r=2))


def test_bench_with_a_4bit_base_records_it(folder, tmp_path):
    from test_bench import CONFIG, synthetic_suite

    from curlora.recipes.bench import Bench, make_config
    from curlora.reports.bench import write_report

    with pytest.raises(CurloraError, match="drop 'full'"):
        make_config("quick", **{**CONFIG, "model": str(folder), "methods": ["full"], "quantize": "4bit"})
    config = make_config(
        "quick", **{**CONFIG, "model": str(folder), "methods": ["curlora-2", "head_only"], "quantize": "4BIT"}
    )
    results = Bench(config, tmp_path / "run", suite=synthetic_suite()).run()
    assert results["config"]["quantize"] == "4bit"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["quantize"] == "4bit"
    assert all(run["complete"] for run in results["runs"])
    assert "4bit base (bitsandbytes)" in write_report(tmp_path / "run").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bench", "--quantize", "3bit"], "'3bit' is not supported; choose 4bit or 8bit"),
        (["bench", "--quantize", "4bit", "--methods", "curlora-4,full"], "drop 'full'"),
    ],
)
def test_cli_refuses_bad_quantize_before_writing(args, message, tmp_path):
    from typer.testing import CliRunner

    from curlora.cli import app

    out = tmp_path / "run"
    result = CliRunner().invoke(app, [*args, "--out", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()
