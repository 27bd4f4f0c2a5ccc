"""The fused Triton kernels (curlora.tuner.kernels) against an fp64 reference and against the torch-ops path.

Without a GPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, read when Triton is imported, so in a
subprocess). On a CUDA machine the same checks run on the GPU, plus torch.compile of the layer.
Both need Triton installed (`pip install triton`; the dev extra has it on Linux).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from curlora.tuner.layer import _FromBaseOutput

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")

# (tokens, width, rank, bias, repeated rows): odd sizes exercise every mask; rank 4 and 20 are padded blocks;
# width 300 is split over several column shares (the last one running past the width)
CASES = [
    (37, 70, 16, False, False),
    (130, 200, 4, True, True),
    (64, 128, 20, True, False),
    (40, 300, 16, False, False),
    (200, 150, 16, True, False),
]


def _case(tokens, width, rank, bias, repeated, dtype, device):
    g = torch.Generator().manual_seed(tokens * 1000 + rank)
    y = torch.randn(tokens, width, generator=g).to(device, dtype)
    # the adapter's delta about as large as y, so that a wrong term shows above bf16 rounding
    c = (0.5 * torch.randn(width, rank, generator=g)).to(device, dtype)
    u = (0.5 * torch.randn(rank, rank, generator=g)).to(device)
    rows = torch.randperm(width, generator=g)[:rank]
    if repeated:
        rows[1] = rows[0]
    bias_rows = torch.randn(rank, generator=g).to(device, dtype) if bias else None
    grad = torch.randn(tokens, width, generator=g).to(device, dtype)
    return y, c, u, rows.to(device), bias_rows, grad


def _run(y, c, u, rows, bias_rows, grad, alpha, fused, grad_y=True):
    y = y.clone().requires_grad_(grad_y)
    u = u.clone().requires_grad_(True)
    out = _FromBaseOutput.apply(y, c, u, rows, bias_rows, alpha, fused)
    out.backward(grad)
    return out.detach(), y.grad, u.grad


def _reference(y, c, u, rows, bias_rows, grad, alpha):
    y, c, u, grad = (v.double() for v in (y, c, u, grad))
    y = y.requires_grad_(True)
    u = u.requires_grad_(True)
    t = y[:, rows] - (0 if bias_rows is None else bias_rows.double())
    out = y + (t @ (alpha * u).T) @ c.T
    out.backward(grad)
    return out.detach(), y.grad, u.grad


def check_kernels(device: str) -> list[str]:
    """Errors of the fused path vs fp64: ≤ 1e-5 in fp32 (this checks the logic); in bf16 ≤ twice the torch
    path's own error or 2 bf16 ulps, 4 in the interpreter (it truncates fp32 → bf16 where GPUs round to nearest).
    Every case runs through both backward designs, whichever its shape would pick on this device."""
    from curlora.tuner import kernels

    failures = []
    switch = kernels._BACKWARD_ROWS["min_programs_per_sm"]
    try:
        for design, threshold in (("one-kernel", 0), ("split", float("inf"))):
            kernels._BACKWARD_ROWS["min_programs_per_sm"] = threshold
            for dtype in (torch.float32, torch.bfloat16):
                for case in CASES:
                    failures += [f"{design} {dtype} {case} {f}" for f in _case_errors(case, dtype, device)]
    finally:
        kernels._BACKWARD_ROWS["min_programs_per_sm"] = switch
    return failures


def _case_errors(case, dtype, device) -> list[str]:
    failures = []
    half_ulps = 4 if device == "cpu" else 2
    inputs = _case(*case, dtype, device)
    ref = _reference(*inputs, alpha=0.7)
    torch_ops = _run(*inputs, alpha=0.7, fused=False)
    fused = _run(*inputs, alpha=0.7, fused=True)
    # only U needs a gradient (the first adapted layer of a frozen model): no gradient for y is written
    fused_u_only = _run(*inputs, alpha=0.7, fused=True, grad_y=False)
    if fused_u_only[1] is not None or not torch.equal(fused_u_only[2], fused[2]):
        failures.append("grad_u differs when y needs no gradient")
    for name, r, a, b in zip(("out", "grad_y", "grad_u"), ref, torch_ops, fused, strict=True):
        scale = r.abs().max().item()
        err_fused = (b.double() - r).abs().max().item() / scale
        err_torch = (a.double() - r).abs().max().item() / scale
        bound = 1e-5 if dtype == torch.float32 else max(2 * err_torch, half_ulps * 2**-8)
        if b.dtype != a.dtype or b.shape != a.shape or not err_fused <= bound:
            failures.append(f"{name}: rel. error {err_fused:.2e} > {bound:.2e}")
    return failures


def check_groups(device: str, compiled: bool = False) -> list[str]:
    """A tiny Llama with CURLoRA on q/k/v: with its q/k/v groups (one launch for three adapters) against the
    same model with the groups unlinked (one launch each), forward and backward. `compiled` runs the grouped
    model under torch.compile (how CUDA gets the kernels) and the ungrouped one eagerly (the torch ops)."""
    from peft import get_peft_model

    from curlora import CURLoRAConfig
    from curlora.testing import tiny_llama
    from curlora.tuner.layer import CURLoRALinear

    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = get_peft_model(tiny_llama(num_layers=2).to(device, dtype), CURLoRAConfig(r=4, alpha=1.5))
    layers = [m for m in model.modules() if isinstance(m, CURLoRALinear)]
    groups = {id(m._shared_input_group) for m in layers if m._shared_input_group is not None}
    failures = [] if len(groups) == 2 else [f"{len(groups)} groups linked for 2 blocks"]
    for layer in layers:
        layer.curlora_U["default"].data.normal_(std=0.5)
    ids = torch.randint(3, 60, (2, 12), device=device)

    def run(fn):
        model.zero_grad()
        logits = fn(input_ids=ids).logits
        logits.float().square().mean().backward()
        return logits.detach(), [m.curlora_U["default"].grad.clone() for m in layers]

    def infer(fn):
        with torch.no_grad():
            return fn(input_ids=ids).logits

    fn = torch.compile(model, fullgraph=True) if compiled else model
    grouped, grouped_infer = run(fn), infer(fn)
    waiting = [m for m in layers if m._shared_input_group._input is not None]
    if waiting:
        failures.append(f"{len(waiting)} layers still hold a leader's input after the forward")
    # a follower called on its own, on another input, computes its own output
    k_proj = layers[1]
    x = torch.randn(3, k_proj.in_features, device=device, dtype=dtype)
    k_alone = k_proj(x)
    saved = [m._shared_input_group for m in layers]
    for layer in layers:
        layer._shared_input_group = None
    alone, alone_infer = run(model), infer(model)
    if not torch.equal(k_alone, k_proj(x)):
        failures.append("a follower called alone did not compute its own output")
    for layer, group in zip(layers, saved, strict=True):
        layer._shared_input_group = group
    tolerance = 2e-2 if compiled else 1e-5
    pairs = [("logits", grouped[0], alone[0]), ("logits without grad", grouped_infer, alone_infer)]
    for name, a, b in pairs + [
        (f"grad U {i}", a, b) for i, (a, b) in enumerate(zip(grouped[1], alone[1], strict=True))
    ]:
        rel = ((a.float() - b.float()).norm() / b.float().norm()).item()
        if not rel <= tolerance:
            failures.append(f"{name}: relative difference {rel:.2e} > {tolerance:.0e}")
    return failures


def _triton_at_least_3_9() -> bool:
    import triton

    return tuple(int(p) for p in triton.__version__.split(".")[:2]) >= (3, 9)


@needs_triton
def test_fused_kernels_match_reference_in_interpreter():
    if not _triton_at_least_3_9():
        pytest.skip("older Triton interpreters (3.6 seen) cannot loop to a runtime bound; tested with Triton 3.9")
    # deterministic mode fills torch.empty with NaN: a kernel that reads memory it never wrote fails here too
    code = (
        "import sys, torch, test_kernels; torch.use_deterministic_algorithms(True); "
        "f = test_kernels.check_kernels('cpu') + test_kernels.check_groups('cpu'); print(*f, sep='\\n'); "
        "sys.exit(bool(f))"
    )
    env = os.environ | {"TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), *sys.path])}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]


def test_fused_kernels_are_not_used_on_cpu_without_interpreter():
    from curlora.tuner import kernels

    if kernels._INTERPRET:
        pytest.skip("this process runs Triton's interpreter")
    assert not kernels.usable(torch.zeros(4, 4), 16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@needs_triton
def test_fused_kernels_match_reference_on_gpu():
    assert check_kernels("cuda") == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@needs_triton
def test_compiled_qkv_groups_match_eager():
    assert check_groups("cuda", compiled=True) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@needs_triton
def test_fused_kernels_compile_a_bounded_number_of_graphs_over_many_lengths():
    """HF Trainer pads per batch, so the token count changes almost every step; the kernels' launch grid depends
    on it. Under torch.compile with a dynamic length that must not become one graph per length."""
    import curlora
    from curlora.tuner.layer import CURLoRALinear

    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    base = torch.nn.Linear(256, 192, bias=False, device="cuda", dtype=torch.bfloat16).requires_grad_(False)
    layer = CURLoRALinear(base, "default", curlora.CURLoRAConfig(r=16), layer_name="x")
    fn = torch.compile(layer)
    for length in (17, 23, 31, 45, 64, 90, 128, 200, 256, 333):  # below the one-kernel backward size (H100/H200)
        x = torch.randn(8, length, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        fn(x).float().square().sum().backward()
    assert counters["stats"]["unique_graphs"] <= 3, dict(counters["stats"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@needs_triton
def test_compiled_layer_with_fused_kernels_matches_eager():
    import curlora
    from curlora.tuner.layer import CURLoRALinear

    torch.manual_seed(0)
    base = torch.nn.Linear(256, 192, bias=False, device="cuda", dtype=torch.bfloat16).requires_grad_(False)
    layer = CURLoRALinear(base, "default", curlora.CURLoRAConfig(r=16), layer_name="x")
    layer.curlora_U["default"].data.normal_(std=0.05)
    x = torch.randn(4, 100, 256, device="cuda", dtype=torch.bfloat16)
    results = []
    for fn in (layer, torch.compile(layer, fullgraph=True)):
        xi = x.clone().requires_grad_(True)
        layer.curlora_U["default"].grad = None
        out = fn(xi)
        out.float().square().sum().backward()
        results.append((out, xi.grad, layer.curlora_U["default"].grad.clone()))
    # eager runs the torch ops, which round g·C and grad U to bf16; the kernels keep fp32 sums: compare norms
    for name, eager, compiled in zip(("out", "grad x", "grad U"), *results, strict=True):
        rel = ((compiled.float() - eager.float()).norm() / eager.float().norm()).item()
        assert rel < 1e-2, f"{name}: relative difference {rel:.2e}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@needs_triton
def test_compiled_backward_leaves_a_shared_gradient_alone():
    """The output gradient here is also the gradient of `other` (an add hands the same tensor to both inputs):
    a backward that updated it in place would corrupt `other.grad`. Under torch.compile on an H100 such a version
    (the user Triton kernel storing into its input g) failed this test: nothing copies g first (session 5)."""
    import curlora
    from curlora.tuner.layer import CURLoRALinear

    torch.manual_seed(0)
    base = torch.nn.Linear(256, 192, bias=False, device="cuda", dtype=torch.bfloat16).requires_grad_(False)
    layer = CURLoRALinear(base, "default", curlora.CURLoRAConfig(r=16), layer_name="x")
    layer.curlora_U["default"].data.normal_(std=0.5)
    x = torch.randn(2, 64, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    other = torch.zeros(2, 64, 192, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(2, 64, 192, device="cuda", dtype=torch.bfloat16)

    def loss(x, other):
        return ((layer(x) + other).float() * weight).sum()

    torch.compile(loss, fullgraph=True)(x, other).backward()
    assert torch.equal(other.grad, weight), "the shared output gradient was overwritten"


def _three_each(types: str) -> str:
    return " ".join(" ".join(3 * [t]) for t in types.split())


# argument types of each kernel for an ahead-of-time compile: "a" is the activation dtype, constexprs last
_KERNEL_ARGS = {
    "_forward_kernel": (
        "*a *a *fp32 *i64 *a *a *a i32 i32 i32 fp32 i32",
        {"HAS_BIAS": True, "BM": 16, "BN": 128},
    ),
    "_backward_reduce_kernel": (
        "*a *a *a *fp32 i32 i32 i32 i32",
        {"WRITE_GRAD_Y": True, "BM": 32, "BN": 128},
    ),
    "_backward_finish_kernel": (
        "*a *fp32 *fp32 *a *i64 *a *fp32 i32 i32 i32 fp32 i32",
        {"WRITE_GRAD_Y": True, "BM": 32},
    ),
    "_backward_rows_kernel": (
        "*a *a *fp32 *a *i64 *a *fp32 i32 i32 i32 fp32",
        {"WRITE_GRAD_Y": True, "BM": 32, "BN": 128},
    ),
    # q, k and v in one launch: each argument three times (the U-gradient partials once)
    "_forward_group_kernel": (
        _three_each("*a *a *fp32 *i64 *a *a *a i32 fp32") + " i32 i32",
        {"HAS_BIAS": True, "BM": 16, "BN": 128},
    ),
    "_backward_group_kernel": (
        _three_each("*a *a *fp32 *a *i64 *a") + " *fp32 " + _three_each("i32 fp32") + " i32 i32",
        {"WRITE_GRAD_Y": True, "BM": 32, "BN": 128},
    ),
}


@needs_triton
@pytest.mark.parametrize(("dtype", "rank_block"), [("bf16", 16), ("fp32", 16), ("bf16", 64)])
def test_kernels_compile_for_an_h100_without_a_gpu(dtype, rank_block):
    """Triton's own compiler, down to PTX and ptxas for sm_90: catches what the interpreter does not check
    (tl.dot shapes and types, constexpr use) on machines without a GPU."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from curlora.tuner import kernels

    if not _triton_at_least_3_9():
        pytest.skip("tested with Triton 3.9's ahead-of-time compile API")
    # rank blocks 16 (r ≤ 16) to 64 (the largest rank the kernels take)
    constexprs = {"PRECISION": "ieee" if dtype == "fp32" else "tf32", "UPCAST": False, "RP": rank_block}
    for name, (types, extra) in _KERNEL_ARGS.items():
        fn = getattr(kernels, name)
        consts = constexprs | extra
        runtime_args = [a for a in fn.arg_names if a not in consts]
        signature = dict(zip(runtime_args, types.replace("*a", f"*{dtype}").split(), strict=True))
        signature |= dict.fromkeys(consts, "constexpr")
        source = ASTSource(
            fn=fn, signature=signature, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()}
        )
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        assert f".entry {name}" in compiled.asm["ptx"] and len(compiled.asm["cubin"]) > 1000, name
