"""The controls of CURLoRA's subspace (cur-random, svd-top, svd-bottom) and VeRA: math, zero init, save/load, bench."""

import json
import random

import peft
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import curlora
from curlora import cur
from curlora.data import Example, Suite, Task
from curlora.errors import CurloraError
from curlora.methods import parse_method, wrap_model
from curlora.recipes.bench import Bench, make_config
from curlora.testing import tiny_gpt2, tiny_llama, tiny_tokenizer
from curlora.tuner.basis import singular_vectors
from curlora.tuner.layer import CURLoRALinear

R = 4
SEED = 5
CONTROLS = ("random", "svd-top", "svd-bottom")
TARGETS = {tiny_llama: ["q_proj", "k_proj", "v_proj"], tiny_gpt2: ["c_attn"]}


def _wrapped(basis, arch=tiny_llama, seed=0, **kwargs):
    config = curlora.CURLoRAConfig(r=R, seed=SEED, basis=basis, target_modules=TARGETS[arch], **kwargs)
    return peft.get_peft_model(arch(seed=seed), config)


def _layers(model):
    """(name in the base model, layer) for every CURLoRA layer: the name the layer's seed derives from."""
    prefix = "base_model.model."
    return [(n.removeprefix(prefix), m) for n, m in model.named_modules() if isinstance(m, CURLoRALinear)]


def _sampled(layer, name):
    """The C and R that CURLoRA (basis "cur") would use for this layer, computed independently."""
    weight = layer.dense_weight()
    selection = cur.cur_select(weight, R, "inverted", seed=cur.layer_seed(SEED, name))
    return cur.cur_factors(weight, selection)


def _tokens():
    return torch.randint(4, 300, (2, 12), generator=torch.Generator().manual_seed(0))


def _randomise_u(model, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in _layers(model):
            u = layer.curlora_U["default"]
            u.copy_(torch.randn(u.shape, generator=gen) * 0.3)


@pytest.mark.parametrize("arch", [tiny_llama, tiny_gpt2])
def test_cur_random_has_the_sampled_norms_but_not_the_sampled_factors(arch):
    model = _wrapped("random", arch)
    seen = []
    for name, layer in _layers(model):
        c, r = layer.curlora_C["default"], layer.curlora_R["default"]
        c_cur, r_cur = _sampled(layer, name)
        assert c.shape == c_cur.shape and r.shape == r_cur.shape
        assert float(c.norm()) == pytest.approx(float(c_cur.norm()), rel=1e-5)
        assert float(r.norm()) == pytest.approx(float(r_cur.norm()), rel=1e-5)
        assert not torch.allclose(c, c_cur, atol=1e-3) and not torch.allclose(r, r_cur, atol=1e-3)
        # the sampled indices are kept (they set the norms and are what the file stores)
        assert set(layer.curlora_cols["default"].tolist()) == set(_sampled_indices(layer, name)[0])
        seen.append(c)
    # each layer draws its own matrices (block 0's first projection against block 1's), and the same config
    # draws the same ones again
    first = [c for c in seen if c.shape == seen[0].shape]
    assert not torch.allclose(first[0] / first[0].norm(), first[1] / first[1].norm(), atol=1e-2)
    again = [layer.curlora_C["default"] for _, layer in _layers(_wrapped("random", arch))]
    assert all(torch.equal(a, b) for a, b in zip(seen, again, strict=True))


def _sampled_indices(layer, name):
    sel = cur.cur_select(layer.dense_weight(), R, "inverted", seed=cur.layer_seed(SEED, name))
    return sel.cols.tolist(), sel.rows.tolist()


def _projector(basis_vectors):
    """Orthogonal projector onto the span of the columns of `basis_vectors` (float64)."""
    return basis_vectors @ basis_vectors.T


@pytest.mark.parametrize("arch", [tiny_llama, tiny_gpt2])
@pytest.mark.parametrize("which", ["svd-top", "svd-bottom"])
def test_svd_factors_span_the_chosen_singular_subspaces(arch, which):
    model = _wrapped(which, arch)
    for name, layer in _layers(model):
        w = layer.dense_weight().detach().double()
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        k = s.numel()
        keep, other = (slice(0, R), slice(R, k)) if which == "svd-top" else (slice(k - R, k), slice(0, k - R))
        c = layer.curlora_C["default"].double()
        r = layer.curlora_R["default"].double()
        # columns of C lie in the chosen left subspace, rows of R in the chosen right one ...
        assert torch.allclose(_projector(u[:, keep]) @ c, c, atol=1e-5 * float(c.norm()))
        assert torch.allclose(r @ _projector(vh[keep].T), r, atol=1e-5 * float(r.norm()))
        # ... and fill it (rank r), with nothing in the rest of the spectrum
        assert torch.linalg.matrix_rank(c) == R and torch.linalg.matrix_rank(r) == R
        assert float((u[:, other].T @ c).norm()) < 1e-5 * float(c.norm())
        # scaled like the sampled C and R (no singular values folded in: orthogonal columns of equal length)
        c_cur, r_cur = _sampled(layer, name)
        assert float(c.norm()) == pytest.approx(float(c_cur.norm()), rel=1e-5)
        assert float(r.norm()) == pytest.approx(float(r_cur.norm()), rel=1e-5)
        gram = c.T @ c
        assert torch.allclose(gram, gram.diagonal().mean() * torch.eye(R, dtype=gram.dtype), atol=1e-5)


def test_singular_vectors_are_sign_fixed_and_refuse_a_non_unique_subspace():
    w = torch.randn(12, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u, vh = singular_vectors(w, 3, top=False)
    u_neg, vh_neg = singular_vectors(-w, 3, top=False)
    assert torch.allclose(u, u_neg) and torch.allclose(vh, -vh_neg)  # the sign moves to one side, fixed
    assert (u.gather(0, u.abs().argmax(0, keepdim=True)) > 0).all()
    q, _ = torch.linalg.qr(w)  # 12 × 9 with orthonormal columns: nine equal singular values
    with pytest.raises(CurloraError, match="not unique"):
        singular_vectors(q, 3, top=True)
    assert singular_vectors(q, 9, top=True)[0].shape == (12, 9)  # the whole spectrum is unique


@pytest.mark.parametrize("spec", ["cur-random-4", "svd-top-4", "svd-bottom-4", "vera-4"])
def test_zero_init_equals_the_base_model_and_trains_r_squared_parameters(spec):
    x = _tokens()
    with torch.no_grad():
        expected = tiny_llama()(x).logits
    model = wrap_model(
        tiny_llama(), parse_method(spec), target_modules=TARGETS[tiny_llama], alpha=1.0, sampling="inverted", seed=3
    )
    with torch.no_grad():
        assert torch.equal(model(x).logits, expected)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    layers = 2 * 3  # tiny Llama: 2 blocks × q/k/v
    if spec.startswith("vera"):  # per layer λ_b (out) + λ_d (r): q is 64 wide, k and v 32 (grouped kv heads)
        assert trainable == 2 * ((64 + R) + 2 * (32 + R))
    else:
        assert trainable == layers * R * R


@pytest.mark.parametrize("basis", CONTROLS)
def test_forward_is_the_direct_product_not_the_base_output_shortcut(basis):
    """R is not rows of W here: reading x·Rᵀ off the base output would be wrong, and this would catch it."""
    model = _wrapped(basis)
    _randomise_u(model)
    x = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(2))
    for _, layer in _layers(model):
        assert not layer.curlora_reuse_base_output["default"]
        base = layer.get_base_layer()
        expected = F.linear(x, base.weight + layer.get_delta_weight("default"), base.bias)
        with torch.no_grad():
            assert torch.allclose(layer(x), expected, atol=1e-5)
    # CURLoRA itself keeps its shortcut
    assert all(layer.curlora_reuse_base_output["default"] for _, layer in _layers(_wrapped("cur")))


@pytest.mark.parametrize("arch", [tiny_llama, tiny_gpt2])
@pytest.mark.parametrize("basis", CONTROLS)
def test_save_and_load_give_identical_outputs_and_refuse_another_base(tmp_path, arch, basis):
    model = _wrapped(basis, arch)
    _randomise_u(model)
    x = _tokens()
    with torch.no_grad():
        expected = model(x).logits
    assert not torch.equal(expected, arch()(x).logits)  # U moved the outputs
    model.save_pretrained(tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["basis"] == basis
    # the file holds what a CURLoRA adapter holds: U, indices, fingerprint; C and R are rebuilt from W
    saved = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    keys = {k.rsplit(".", 1)[-1] for k in saved}
    assert keys == {"curlora_U", "curlora_cols", "curlora_rows", "curlora_fingerprint"}
    loaded = curlora.load_adapter(arch(), tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, expected)
    with pytest.raises(CurloraError, match="does not match this base model"):
        curlora.load_adapter(arch(seed=1), tmp_path / "adapter")


def test_an_adapter_config_without_basis_loads_as_curlora(tmp_path):
    """Adapters saved before `basis` existed have no such key: they must load as the CUR basis, unchanged."""
    model = _wrapped("cur")
    _randomise_u(model)
    x = _tokens()
    with torch.no_grad():
        expected = model(x).logits
    model.save_pretrained(tmp_path / "adapter")
    config_file = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    del config["basis"]
    config_file.write_text(json.dumps(config))
    loaded = curlora.load_adapter(tiny_llama(), tmp_path / "adapter")
    assert loaded.peft_config["default"].basis == "cur"
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, expected)


def test_vera_saves_and_loads_with_its_projections(tmp_path):
    model = wrap_model(
        tiny_llama(), parse_method("vera-4"), target_modules=TARGETS[tiny_llama], alpha=1.0, sampling="inverted", seed=3
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "vera_lambda_b" in name:
                p.normal_(generator=torch.Generator().manual_seed(len(name)))
    x = _tokens()
    with torch.no_grad():
        expected = model(x).logits
    model.save_pretrained(tmp_path / "adapter")
    assert any("vera_A" in k for k in load_file(str(tmp_path / "adapter" / "adapter_model.safetensors")))
    with torch.no_grad():
        assert torch.equal(curlora.load_adapter(tiny_llama(), tmp_path / "adapter")(x).logits, expected)


def test_method_specs_and_bad_inputs():
    spec = parse_method("svd-bottom-16:lr=1e-3,sampling=uniform")
    assert (spec.label, spec.method, spec.rank, spec.lr, spec.sampling) == (
        "svd-bottom-16:lr=1e-3,sampling=uniform",
        "svd-bottom",
        16,
        1e-3,
        "uniform",
    )
    assert parse_method("cur-random-8").method == "cur-random" and parse_method("vera-256").rank == 256
    assert all(parse_method(s).has_adapter for s in ("cur-random-2", "svd-top-2", "vera-2"))
    assert parse_method("svd-top-2").takes_sampling and not parse_method("vera-2").takes_sampling
    assert parse_method("cur-random-2").takes_alpha and not parse_method("vera-2").takes_alpha
    with pytest.raises(CurloraError, match="needs a rank"):
        parse_method("cur-random")
    with pytest.raises(CurloraError, match="unknown method"):
        parse_method("svd-middle-4")
    with pytest.raises(CurloraError, match="does not apply to vera"):
        parse_method("vera-4:sampling=uniform")
    with pytest.raises(CurloraError, match="does not apply to vera"):
        parse_method("vera-4:alpha=2")
    with pytest.raises(CurloraError, match="unknown basis"):
        curlora.CURLoRAConfig(r=4, basis="pca")


def _suite() -> Suite:
    rng = random.Random(0)
    words = "alpha beta gamma delta river stone cloud paper".split()

    def task(name, markers):
        splits = []
        for n in (8, 8):
            ex = [
                Example(text=" ".join(rng.choice(words) for _ in range(4)) + f" {m}", label=k)
                for k, m in enumerate(markers)
                for _ in range(n // 2)
            ]
            rng.shuffle(ex)
            splits.append(ex)
        return Task(name=name, kind="single", label_names=tuple(markers), train=splits[0], eval=splits[1])

    text = " ".join(rng.choice(words) for _ in range(200))
    return Suite(name="tiny", tasks=[task("a", ["good", "bad"]), task("b", ["sun", "moon"])], ppl_name="t",
                 ppl_text=text, notes=[])  # fmt: skip


def test_bench_runs_each_control(tmp_path):
    methods = ["cur-random-2", "svd-top-2", "svd-bottom-2", "vera-2"]
    config = make_config(
        "quick", model="tiny", methods=methods, n_train=8, n_eval=8, epochs=1, batch_size=4, eval_batch_size=8,
        lr=5e-3, max_length=16, ppl_max_length=32, ppl_stride=16, ppl_max_tokens=64, device="cpu", seeds=[0],
    )  # fmt: skip
    results = Bench(config, tmp_path / "run", model=tiny_llama(), tokenizer=tiny_tokenizer(), suite=_suite()).run()
    by_label = {r["label"]: r for r in results["runs"]}
    assert list(by_label) == methods
    for label, run in by_label.items():
        assert run["complete"] and [len(row) for row in run["acc"]] == [1, 2]
        assert run["delta_norm_ratio"]["max"] > 0, label  # the adapter learned something
    assert all(by_label[m]["trainable_params"] == 6 * 2 * 2 for m in methods[:3])
    # a saved stage reloads onto the base model and reproduces its C and R from W
    stage = tmp_path / "run" / "runs" / "svd-bottom-2" / "seed-0" / "stage-1-b" / "adapter"
    loaded = curlora.load_adapter(tiny_llama(), stage)
    assert loaded.peft_config["default"].basis == "svd-bottom"
