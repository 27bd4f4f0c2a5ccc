"""torch.compile(fullgraph=True) of the CURLoRA layer and of tiny models with CURLoRA: same outputs and
gradients as eager. Also checks the layer's two forward paths (x·Rᵀ taken from the base output, and the x·Rᵀ
GEMM) against the pre-optimisation forward (benchmarks/layer_variants.py), and when each path is taken."""

import importlib.util
import shutil
import sys
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

BENCHMARKS = Path(__file__).resolve().parents[2] / "perf"
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
    sys.modules["layer_variants"] = module  # dynamo resolves the module's autograd Functions by module name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("layer_variants", None)


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


def _path(layer: CURLoRALinear, x: torch.Tensor) -> str:
    """Which forward path produced the output: 'base-output' (the columns gathered from the base output, by the
    autograd Function or, eagerly without the fused kernels, by an index_select) or 'x·Rᵀ'."""
    out = layer(x.detach().clone().requires_grad_(True))
    seen, todo = set(), [out.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        name = type(node).__name__
        if name.startswith("_FromBaseOutput") or name == "IndexSelectBackward0":
            return "base-output"
        todo += [nxt for nxt, _ in node.next_functions]
    return "x·Rᵀ"


@pytest.mark.parametrize("kind", ["linear", "linear-bias", "conv1d"])
def test_autocast_over_float32_factors_reuses_the_base_output_and_matches(variants, kind):
    # under autocast the base output is bf16 while C and R stay fp32; its columns are autocast's x·Rᵀ
    layer = _layer(kind)
    x = torch.randn(3, 4, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _run_with(variants, "library", layer, x)
        want = _run_with(variants, "orig", layer, x)
        variants.use(layer, "library")
        assert _path(layer, x) == "base-output"
    assert got[0].dtype == want[0].dtype == torch.bfloat16
    _assert_same(got, want, rtol=2e-2, atol=2e-2)  # bf16 products summed in another order


def test_autocast_to_another_dtype_than_the_factors_takes_the_xr_path(variants):
    # fp16 autocast over bf16 factors: the base output's columns are not x·Rᵀ in the factors' dtype
    layer = _layer("linear").to(torch.bfloat16)
    x = torch.randn(3, 4, 32, dtype=torch.bfloat16)
    variants.use(layer, "library")
    with torch.autocast("cpu", dtype=torch.float16):
        assert _path(layer, x) == "x·Rᵀ"
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast to the factors' own dtype: nothing to cast
        assert _path(layer, x) == "base-output"


@pytest.mark.parametrize("kind", ["linear", "linear-bias", "conv1d"])
def test_base_output_path_is_taken_and_equals_the_xr_path(variants, kind):
    layer = _layer(kind)
    x = torch.randn(3, 4, 32)
    variants.use(layer, "library")
    assert _path(layer, x) == "base-output"
    got = _run_with(variants, "library", layer, x)
    _assert_same(got, _run_with(variants, "xr", layer, x))
    with torch.no_grad():  # without gradients: the same ops, the same numbers
        torch.testing.assert_close(variants.use(layer, "library")(x), got[0], rtol=0, atol=0)


def test_base_output_path_with_repeated_rows_and_no_input_grad(variants):
    # `reference` samples with replacement: a row picked twice must get both gradient contributions
    torch.manual_seed(0)
    base = nn.Linear(32, 24, bias=False).requires_grad_(False)
    layer = CURLoRALinear(base, "default", CURLoRAConfig(r=12, sampling="reference", seed=3), layer_name="rep")
    assert layer.curlora_rows["default"].unique().numel() < 12  # the seed gives duplicates
    layer.curlora_U["default"].data.normal_(std=0.5)
    x = torch.randn(3, 4, 32)
    _assert_same(_run_with(variants, "library", layer, x), _run_with(variants, "xr", layer, x))
    # an input that needs no gradient (the first layer of a model): U still gets its gradient
    variants.use(layer, "library")
    layer.curlora_U["default"].grad = None
    layer(x).square().sum().backward()
    want = layer.curlora_U["default"].grad.clone()
    variants.use(layer, "xr")
    layer.curlora_U["default"].grad = None
    layer(x).square().sum().backward()
    torch.testing.assert_close(want, layer.curlora_U["default"].grad, rtol=1e-5, atol=1e-5)


def test_base_output_path_in_bfloat16_is_as_close_as_the_xr_path(variants):
    reference = _layer("linear-bias")  # float32: the "exact" numbers
    x = torch.randn(4, 16, 32)
    exact = _run(reference, reference, x)
    layer = _layer("linear-bias").to(torch.bfloat16)  # the same weights, in bf16 (U stays float32)
    errors = {}
    for impl in ("library", "xr"):
        got = _run_with(variants, impl, layer, x.bfloat16())
        errors[impl] = [(a.float() - b).abs().max().item() for a, b in zip(got, exact, strict=True)]
    for got, ref in zip(errors["library"], errors["xr"], strict=True):
        assert got <= 2 * ref + 1e-2, errors


def test_where_the_base_output_path_is_not_taken(variants):
    x = torch.randn(3, 4, 32)
    layer = _layer("linear")
    layer.base_layer.weight.requires_grad_(True)  # W trains: R (a frozen copy) is not W[rows] any more
    assert _path(layer, x) == "x·Rᵀ"
    off = CURLoRALinear(nn.Linear(32, 24).requires_grad_(False), "default", CURLoRAConfig(r=4, reuse_base_output=False))
    assert _path(off, x) == "x·Rᵀ"
    # two active adapters: each adds its own term; they take the x·Rᵀ path and equal the reference
    layer = _layer("linear")
    layer.update_layer("b", CURLoRAConfig(r=3, alpha=0.5, seed=7), layer_name="test.b")
    layer.curlora_U["b"].data.normal_(std=0.5)
    layer.set_adapter(["default", "b"])
    assert _path(layer, x) == "x·Rᵀ"
    with torch.no_grad():
        want = variants.use(layer, "orig")(x)
        got = variants.use(layer, "library")(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_base_output_path_on_a_tiny_model_and_under_fullgraph_compile(variants, arch):
    model = get_peft_model((tiny_llama if arch == "llama" else tiny_gpt2)(), CURLoRAConfig(r=4, alpha=1.5))
    g = torch.Generator().manual_seed(1)
    for layer in (m for m in model.modules() if isinstance(m, CURLoRALayer)):
        layer.curlora_U["default"].data = torch.randn(4, 4, generator=g) * 0.5
    ids = torch.randint(0, 300, (2, 9), generator=g)
    with torch.no_grad():
        want = variants.use(model, "orig")(ids).logits
        got = variants.use(model, "library")(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    layer = variants.use(_layer("conv1d" if arch == "gpt2" else "linear"), "library")
    x = torch.randn(2, 5, 32)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    _assert_same(_run(compiled, layer, x), _run_with(variants, "orig", layer, x))


@pytest.mark.parametrize("backend", ["eager-mode", "aot_eager"])
def test_reduce_variant_matches_the_library(variants, backend):
    # benchmarks/layer_variants.py "reduce": the same math with the rank-r products as sums (for inductor)
    layer = _layer("linear", alpha=1.5)
    x = torch.randn(2, 5, 32)
    want = _run_with(variants, "library", layer, x)
    variants.use(layer, "reduce")
    fn = layer if backend == "eager-mode" else torch.compile(layer, fullgraph=True, backend=backend)
    _assert_same(_run(fn, layer, x), want)
