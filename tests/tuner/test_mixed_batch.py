"""Mixed-adapter batches: `adapter_names=[...]` gives each row the output of its adapter run alone."""

import pytest
import torch
from peft import get_peft_model

from curlora import CURLoRAConfig, CurloraError, CURLoRALayer
from curlora.testing import tiny_gpt2, tiny_llama

ARCHS = {"llama": tiny_llama, "gpt2": tiny_gpt2}


def _model(arch):
    """Two trained-looking adapters of different ranks and alphas (t2 without the base-output path) + the base."""
    model = get_peft_model(ARCHS[arch](), CURLoRAConfig(r=4, seed=1), adapter_name="t1")
    model.add_adapter("t2", CURLoRAConfig(r=6, alpha=2.0, seed=2, reuse_base_output=False))
    model.add_adapter("t3", CURLoRAConfig(r=4, alpha=0.5, seed=3))
    gen = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, CURLoRALayer):
            for u in module.curlora_U.values():
                u.data.normal_(0.0, 0.5, generator=gen)
    return model.eval()


def _alone(model, name, fn):
    if name == "__base__":
        with model.disable_adapter():
            return fn()
    model.set_adapter(name)
    return fn()


NAMES = ["t1", "__base__", "t2", "t1", "t3"]


@pytest.mark.parametrize("arch", ARCHS)
def test_each_row_of_a_mixed_forward_equals_its_adapter_alone(arch):
    model = _model(arch)
    ids = torch.randint(4, 300, (len(NAMES), 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        mixed = model(input_ids=ids, adapter_names=NAMES).logits
        alone = [_alone(model, n, lambda i=i: model(input_ids=ids[i : i + 1]).logits) for i, n in enumerate(NAMES)]
    for i, name in enumerate(NAMES):
        torch.testing.assert_close(mixed[i : i + 1], alone[i], rtol=1e-5, atol=1e-5, msg=f"row {i} ({name})")
    # the adapters really differ from each other and from the base, so the rows above could fail
    assert (alone[0] - alone[1]).abs().max() > 1e-2 and (alone[0] - alone[2]).abs().max() > 1e-2


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_generate_with_mixed_adapters_equals_each_adapter_alone(arch):
    model = _model(arch)
    ids = torch.randint(4, 300, (len(NAMES), 6), generator=torch.Generator().manual_seed(2))
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=3)
    with torch.no_grad():
        mixed = model.generate(input_ids=ids, adapter_names=NAMES, **kw)
        alone = [
            _alone(model, n, lambda i=i: model.generate(input_ids=ids[i : i + 1], **kw)) for i, n in enumerate(NAMES)
        ]
    assert mixed.shape[1] == ids.shape[1] + 8
    for i in range(len(NAMES)):
        assert mixed[i].tolist() == alone[i][0].tolist(), f"row {i} ({NAMES[i]})"
    assert len({tuple(a[0].tolist()) for a in alone}) > 1  # the adapters lead to different continuations


def test_layer_called_directly_and_beam_search():
    model = _model("llama")
    layer = next(m for m in model.modules() if isinstance(m, CURLoRALayer))
    x = torch.randn(3, 5, layer.in_features)
    with torch.no_grad():
        out = layer(x, adapter_names=["t3", "__base__", "t1"])
        model.set_adapter("t3")
        torch.testing.assert_close(out[0], layer(x[0:1])[0])
        torch.testing.assert_close(out[1], layer.base_layer(x[1]))
        ids = torch.randint(4, 300, (2, 5), generator=torch.Generator().manual_seed(3))
        kw = dict(max_new_tokens=4, do_sample=False, num_beams=2, pad_token_id=3)
        mixed = model.generate(input_ids=ids, adapter_names=["t2", "__base__"], **kw)
        model.set_adapter("t2")
        alone = model.generate(input_ids=ids[:1], **kw)
    assert mixed[0].tolist() == alone[0].tolist()


def test_bad_adapter_names_fail_clearly():
    model = _model("gpt2")
    ids = torch.randint(4, 300, (2, 5))
    with pytest.raises(CurloraError, match="2 rows"):
        model(input_ids=ids, adapter_names=["t1", "t2", "t3"])
    with pytest.raises(CurloraError, match=r"'nope'.*loaded: 't1', 't2', 't3'"):
        model(input_ids=ids, adapter_names=["t1", "nope"])
    with pytest.raises(CurloraError, match="one adapter name"):
        model(input_ids=ids, adapter_names="t1")
    model.train()
    with pytest.raises(CurloraError, match="eval"):
        model(input_ids=ids, adapter_names=["t1", "t2"])
    model.eval()
    model.set_adapter("t1")
    model.merge_adapter()
    with pytest.raises(CurloraError, match="unmerge_adapter"):
        model(input_ids=ids, adapter_names=["t1", "t2"])
    model.unmerge_adapter()
    with torch.no_grad():
        assert model(input_ids=ids, adapter_names=["t1", "t2"]).logits.shape[0] == 2
    # the per-call banks are gone after the call (nothing stale for the next one)
    assert all(m._mixed_banks is None for m in model.modules() if isinstance(m, CURLoRALayer))
