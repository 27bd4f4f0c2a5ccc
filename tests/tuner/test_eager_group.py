"""The q/k/v group without fused kernels (eager, CPU) runs as one batch of torch ops: the layers' own numbers."""

import pytest
import torch
from peft import get_peft_model

from curlora import CURLoRAConfig
from curlora.testing import tiny_llama
from curlora.tuner import group as group_module
from curlora.tuner.layer import CURLoRALinear


def _adapted(monkeypatch, alpha=1.0):
    """A 2-block tiny Llama with non-zero U on q/k/v, its CURLoRA layers, token ids, and the list of what every
    group leader's `lead` returns (None where the group did not run)."""
    torch.manual_seed(0)
    model = get_peft_model(tiny_llama(num_layers=2), CURLoRAConfig(r=4, alpha=alpha))
    layers = [m for m in model.modules() if isinstance(m, CURLoRALinear)]
    for layer in layers:
        layer.curlora_U["default"].data.normal_(std=0.5)
    led = []
    lead = group_module.SharedInputGroup.lead
    monkeypatch.setattr(group_module.SharedInputGroup, "lead", lambda self, *a: led.append(lead(self, *a)) or led[-1])
    return model, layers, torch.randint(3, 300, (2, 12)), led


@pytest.mark.parametrize("alpha", [1.0, 1.5])
def test_eager_group_matches_the_layers_alone_forward_backward_and_inference(monkeypatch, alpha):
    model, layers, ids, led = _adapted(monkeypatch, alpha)
    monkeypatch.setattr(group_module.kernels, "usable", lambda *a, **k: False)  # the torch ops, as on a GPU eagerly

    def run():
        model.zero_grad()
        emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        logits = model(inputs_embeds=emb).logits
        logits.square().mean().backward()
        with torch.no_grad():
            infer = model(input_ids=ids).logits
        return [logits.detach(), infer, emb.grad] + [m.curlora_U["default"].grad.clone() for m in layers]

    grouped = run()
    assert [out is not None for out in led] == [True] * 4  # two blocks, with and without grad
    assert all(m._shared_input_group._input is None for m in layers)  # nothing held after the forward
    groups = [m._shared_input_group for m in layers]
    for layer in layers:
        layer._shared_input_group = None
    alone = run()
    for layer, g in zip(layers, groups, strict=True):
        layer._shared_input_group = g
    for i, (a, b) in enumerate(zip(grouped, alone, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"tensor {i}")
    assert all(u.abs().max() > 0 for u in alone[3:])  # gradients reach every U


def test_eager_group_under_autocast_over_a_float32_model_matches_the_layers_alone(monkeypatch):
    # HF Trainer's bf16=True on a float32 model: bf16 base outputs, float32 C, R and U
    model, layers, ids, led = _adapted(monkeypatch)

    def run():
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=ids).logits
        logits.float().square().mean().backward()
        return [logits.detach().float()] + [m.curlora_U["default"].grad.clone() for m in layers]

    grouped = run()
    assert len(led) == 2 and all(out is not None and out.dtype == torch.bfloat16 for out in led)
    for layer in layers:
        layer._shared_input_group = None
    alone = run()
    for i, (a, b) in enumerate(zip(grouped, alone, strict=True)):
        torch.testing.assert_close(a, b, rtol=5e-2, atol=5e-2, msg=f"tensor {i}")
    assert all(u.abs().max() > 0 for u in grouped[1:])


def test_eager_group_trains_after_an_evaluation_under_inference_mode():
    # the group's cached [R_q; R_k; R_v] made under inference_mode must not reach autograd afterwards
    torch.manual_seed(0)
    model = get_peft_model(tiny_llama(num_layers=1), CURLoRAConfig(r=4))
    ids = torch.randint(3, 300, (2, 6))
    with torch.inference_mode():
        evaluated = model(input_ids=ids).logits
    emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)  # autograd saves R for x's gradient
    model(inputs_embeds=emb).logits.square().mean().backward()
    assert emb.grad is not None
    layers = [m for m in model.modules() if isinstance(m, CURLoRALinear)]
    assert all(m.curlora_U["default"].grad is not None for m in layers)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, evaluated)
