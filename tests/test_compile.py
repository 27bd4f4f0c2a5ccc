"""torch.compile(fullgraph=True) of the CURLoRA layer and of tiny models with CURLoRA: same outputs and
gradients as eager. Also checks the layer's forward paths against the pre-optimisation forward and the
benchmark-only "gather" variant (benchmarks/layer_variants.py) against the library."""

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch
import torch._dynamo
from peft import get_peft_model
from torch import nn
from transformers.pytorch_utils import Conv1D

from curlora import CURLoRAConfig, CURLoRALayer
from curlora.testing import tiny_gpt2, tiny_llama
from curlora.tuner.layer import CURLoRALinear

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
HAVE_CXX = any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def variants():
    """benchmarks/layer_variants.py (switches layers between forward implementations)."""
    spec = importlib.util.spec_from_file_location("layer_variants", BENCHMARKS / "layer_variants.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _layer(kind: str, alpha: float = 1.5, seed: int = 0) -> CURLoRALinear:
    torch.manual_seed(seed)
    if kind == "conv1d":
        base = Conv1D(24, 32)  # in 32, out 24, weight stored in × out
        nn.init.normal_(base.weight, std=0.2)
    else:
        base = nn.Linear(32, 24, bias=(kind == "linear-bias"))
    base.requires_grad_(False)
    layer = CURLoRALinear(base, "default", CURLoRAConfig(r=4, alpha=alpha), layer_name=f"test.{kind}")
    layer.curlora_U["default"].data.normal_(std=0.5)
    return layer


def _run(fn, layer: CURLoRALinear, x: torch.Tensor):
    """Output, dU and dx of one forward + backward."""
    x = x.detach().clone().requires_grad_(True)
    u = layer.curlora_U["default"]
    u.grad = None
    out = fn(x)
    out.square().sum().backward()
    return out.detach(), u.grad.clone(), x.grad.clone()


def _run_with(variants, impl: str, layer: CURLoRALinear, x: torch.Tensor):
    variants.use(layer, impl)
    return _run(layer, layer, x)


def _assert_same(a, b, rtol=1e-5, atol=1e-5):
    for got, want in zip(a, b, strict=True):
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


@pytest.mark.parametrize(
    "kind, backend",
    [
        pytest.param(
            "linear",
            "inductor",
            marks=pytest.mark.skipif(not HAVE_CXX, reason="inductor on CPU needs a C++ compiler"),
        ),
        ("linear-bias", "aot_eager"),
        ("conv1d", "aot_eager"),
    ],
)
def test_layer_fullgraph_compile_matches_eager_with_u_grad(kind, backend):
    layer = _layer(kind)
    x = torch.randn(2, 5, 32)
    compiled = torch.compile(layer, fullgraph=True, backend=backend)
    got = _run(compiled, layer, x)
    want = _run(layer, layer, x)
    _assert_same(got, want)
    assert got[1].abs().sum() > 0


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_tiny_model_fullgraph_compile_matches_eager(arch):
    model = get_peft_model((tiny_llama if arch == "llama" else tiny_gpt2)(), CURLoRAConfig(r=4, alpha=1.5))
    layers = [m for m in model.modules() if isinstance(m, CURLoRALayer)]
    g = torch.Generator().manual_seed(0)
    for layer in layers:
        layer.curlora_U["default"].data = torch.randn(4, 4, generator=g) * 0.5
    backbone = model.base_model.model
    ids = torch.randint(0, 300, (2, 9), generator=g)
    model.train()

    def loss_fn(input_ids):
        return backbone(input_ids).logits.square().mean()

    results = []
    for fn in (torch.compile(loss_fn, fullgraph=True, backend="aot_eager"), loss_fn):
        model.zero_grad(set_to_none=True)
        loss = fn(ids)
        loss.backward()
        results.append((loss.detach(), [layer.curlora_U["default"].grad.clone() for layer in layers]))
    (loss_c, grads_c), (loss_e, grads_e) = results
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads_c, grads_e, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["linear", "linear-bias", "conv1d"])
@pytest.mark.parametrize("alpha", [1.0, 1.5])
def test_library_forward_matches_pre_optimisation_forward(variants, kind, alpha):
    layer = _layer(kind, alpha=alpha)
    x = torch.randn(3, 4, 32)
    want = _run_with(variants, "orig", layer, x)
    got = _run_with(variants, "library", layer, x)
    _assert_same(got, want)


def test_autocast_takes_the_fallback_path_and_matches(variants):
    # under autocast the base output is bf16 while C and R stay fp32: the unfused path must be used
    layer = _layer("linear")
    x = torch.randn(3, 4, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _run_with(variants, "library", layer, x)
        want = _run_with(variants, "orig", layer, x)
    assert got[0].dtype == torch.bfloat16
    _assert_same(got, want, rtol=0, atol=0)


def test_gather_variant_equals_library_and_falls_back_where_not_exact(variants):
    # nn.Linear without bias, frozen: x·Rᵀ is taken from the base output, (x·Wᵀ)[..., rows]
    layer = _layer("linear")
    x = torch.randn(3, 4, 32)
    want = _run_with(variants, "library", layer, x)
    got = _run_with(variants, "gather", layer, x)
    _assert_same(got, want)
    assert variants.gather_ok(layer, layer.base_layer(x), "default")
    # a bias, a Conv1D base or a trainable W make the shortcut inexact: it must not be taken
    for kind in ("linear-bias", "conv1d"):
        other = _layer(kind)
        assert not variants.gather_ok(other, other.base_layer(x), "default")
        _assert_same(_run_with(variants, "gather", other, x), _run_with(variants, "library", other, x))
    layer.base_layer.weight.requires_grad_(True)
    assert not variants.gather_ok(layer, layer.base_layer(x), "default")


def test_gather_variant_on_a_tiny_model_and_under_fullgraph_compile(variants):
    model = get_peft_model(tiny_llama(), CURLoRAConfig(r=4, alpha=1.5))
    g = torch.Generator().manual_seed(1)
    for layer in (m for m in model.modules() if isinstance(m, CURLoRALayer)):
        layer.curlora_U["default"].data = torch.randn(4, 4, generator=g) * 0.5
    ids = torch.randint(0, 300, (2, 9), generator=g)
    with torch.no_grad():
        want = variants.use(model, "library")(ids).logits
        got = variants.use(model, "gather")(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    layer = variants.use(_layer("linear"), "gather")
    x = torch.randn(2, 5, 32)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    _assert_same(_run(compiled, layer, x), _run_with(variants, "library", layer, x))


def test_gather_variant_with_two_active_adapters_gathers_from_the_base_output(variants):
    layer = _layer("linear")
    layer.update_layer("b", CURLoRAConfig(r=3, alpha=0.5, seed=7), layer_name="test.b")
    layer.curlora_U["b"].data.normal_(std=0.5)
    layer.set_adapter(["default", "b"])
    x = torch.randn(3, 4, 32)
    with torch.no_grad():
        want = variants.use(layer, "library")(x)
        got = variants.use(layer, "gather")(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
