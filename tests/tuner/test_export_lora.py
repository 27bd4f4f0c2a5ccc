"""`export_lora` / `curlora export-lora`: plain PEFT (without curlora) loads the export with the same outputs."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from curlora import CURLoRAConfig, CurloraError, CURLoRALayer, export_lora
from curlora.cli import app
from curlora.testing import save_tiny_model

IDS = torch.randint(4, 300, (2, 9), generator=torch.Generator().manual_seed(0))

# runs in a fresh interpreter that never imports curlora: what a LoRA server sees
PLAIN_PEFT = textwrap.dedent(
    """
    import sys, torch
    from peft import PeftModel
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM
    base, out, ids_file, result_file, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
    ids = load_file(ids_file)["ids"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out).eval()
    for name in names[1:]:
        model.load_adapter(f"{out}/{name}", adapter_name=name)
    logits = {}
    with torch.no_grad():
        for name in names:
            model.set_adapter(name)
            logits[name] = model(input_ids=ids).logits.contiguous()
    assert type(model.base_model).__name__ == "LoraModel"
    assert not any(m.startswith("curlora") for m in sys.modules), "curlora was imported"
    save_file(logits, result_file)
    """
)


def _curlora_adapter(tmp_path, arch):
    """A tiny base model folder and a saved CURLoRA adapter folder with two adapters (the second in a subfolder)."""
    base = save_tiny_model(tmp_path / f"base-{arch}", arch)
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    model = get_peft_model(model, CURLoRAConfig(r=4, alpha=1.5, seed=1))
    model.add_adapter("second", CURLoRAConfig(r=6, seed=2))
    gen = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, CURLoRALayer):
            for u in module.curlora_U.values():
                u.data.normal_(0.0, 0.5, generator=gen)
    logits = {}
    with torch.no_grad():
        for name in ("default", "second"):
            model.set_adapter(name)
            logits[name] = model(input_ids=IDS).logits
        with model.disable_adapter():
            logits["base"] = model(input_ids=IDS).logits
    adapter = tmp_path / f"curlora-{arch}"
    model.save_pretrained(adapter, selected_adapters=["default", "second"])
    return base, adapter, logits


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_plain_peft_loads_the_export_with_the_curlora_outputs(tmp_path, arch):
    base, adapter, expected = _curlora_adapter(tmp_path, arch)
    out = tmp_path / "lora"
    written = export_lora(adapter, out)  # the base model is the one the adapter config records
    assert written == {"default": out, "second": out / "second"}
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 4
    assert config["fan_in_fan_out"] is (arch == "gpt2")
    assert sorted(config["target_modules"]) == (["c_attn"] if arch == "gpt2" else ["k_proj", "q_proj", "v_proj"])
    assert json.loads((out / "second" / "adapter_config.json").read_text())["r"] == 6
    save_file({"ids": IDS}, tmp_path / "ids.safetensors")
    proc = subprocess.run(
        [sys.executable, "-c", PLAIN_PEFT, str(base), str(out), str(tmp_path / "ids.safetensors"),
         str(tmp_path / "got.safetensors"), "default", "second"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = load_file(tmp_path / "got.safetensors")
    for name in ("default", "second"):
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=2e-5, msg=name)
        assert (got[name] - expected["base"]).abs().max() > 1e-2  # the adapters change the outputs


def test_export_with_a_loaded_model_leaves_it_untouched_and_the_cli(tmp_path):
    base, adapter, expected = _curlora_adapter(tmp_path, "llama")
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    export_lora(adapter / "second", tmp_path / "one", model)
    assert not any(isinstance(m, CURLoRALayer) for m in model.modules())
    lora = PeftModel.from_pretrained(model, tmp_path / "one").eval()
    with torch.no_grad():
        torch.testing.assert_close(lora(input_ids=IDS).logits, expected["second"], rtol=1e-5, atol=2e-5)

    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(app, ["export-lora", str(adapter), str(out), "--model", str(base)])
    assert result.exit_code == 0, result.output
    assert "second" in result.output and (out / "second" / "adapter_model.safetensors").is_file()
    before = (out / "adapter_model.safetensors").stat().st_mtime_ns
    result = runner.invoke(app, ["export-lora", str(adapter), str(out)])
    assert result.exit_code == 2 and "already exists" in result.output and "--force" in result.output
    assert (out / "adapter_model.safetensors").stat().st_mtime_ns == before
    result = runner.invoke(app, ["export-lora", str(adapter), str(out), "--force"])
    assert result.exit_code == 0, result.output
    assert (out / "adapter_model.safetensors").stat().st_mtime_ns != before


def test_bad_inputs_are_refused_before_anything_is_written(tmp_path, monkeypatch):
    base, adapter, _ = _curlora_adapter(tmp_path, "gpt2")
    out = tmp_path / "out"
    (tmp_path / "empty").mkdir()
    with pytest.raises(CurloraError, match="no adapter_config.json"):
        export_lora(tmp_path / "empty", out)
    lora_dir = tmp_path / "lora-made"
    lora = LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True)
    get_peft_model(AutoModelForCausalLM.from_pretrained(base), lora).save_pretrained(lora_dir)
    with pytest.raises(CurloraError, match="LORA adapter, not a CURLoRA one"):
        export_lora(lora_dir, out)
    with pytest.raises(CurloraError, match="inside the adapter folder"):
        export_lora(adapter, adapter / "lora", force=True)
    other = save_tiny_model(tmp_path / "other", "gpt2", seed=5)  # same shapes, other weights
    with pytest.raises(CurloraError, match="does not match this base model"):
        export_lora(adapter, out, other)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = None
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(CurloraError, match="--model"):
        export_lora(adapter, out)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("curlora.tuner.export.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        export_lora(adapter, out, base)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no half-written temporary left


def test_modules_to_save_are_carried_over(tmp_path):
    base = save_tiny_model(tmp_path / "base", "llama")
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base).eval(), CURLoRAConfig(r=4, modules_to_save=["norm"])
    )
    for name, param in model.named_parameters():
        if "curlora_U" in name:
            param.data.normal_(0.0, 0.5)
        elif "modules_to_save" in name:
            param.data.mul_(1.5)  # a trained copy of the final norm
    with torch.no_grad():
        expected = model(input_ids=IDS).logits
    model.save_pretrained(tmp_path / "curlora")
    export_lora(tmp_path / "curlora", tmp_path / "lora")
    assert json.loads((tmp_path / "lora" / "adapter_config.json").read_text())["modules_to_save"] == ["norm"]
    lora = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), tmp_path / "lora").eval()
    with torch.no_grad():
        torch.testing.assert_close(lora(input_ids=IDS).logits, expected, rtol=1e-5, atol=2e-5)
