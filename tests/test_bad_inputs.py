"""Every bad input the project knows of, in one table: input -> the fragment its one clear error must hold, and
nothing left behind (no run folder, no lock, no changed file). A row deleted here is a check lost, so the table
only grows."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import curlora  # noqa: F401  (registers the PEFT method)
from curlora.cli import app
from curlora.errors import CurloraError
from curlora.files import atomic_write_json
from curlora.recipes.common import resolve_device
from curlora.recipes.sft.config import SFTRecipeConfig
from curlora.testing import save_tiny_model, tiny_llama
from curlora.tuner.config import CURLoRAConfig
from curlora.tuner.saved import ADAPTER_CHECKSUMS, ADAPTER_CONFIG, ADAPTER_WEIGHTS, load_adapter


# -- what the rows act on ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ctx(tmp_path_factory, random_curlora_adapter):
    """A tiny model folder, its base weights and a saved CURLoRA adapter (random U) made on them."""
    root = tmp_path_factory.mktemp("bad-inputs")
    state, _ = random_curlora_adapter(root / "adapter")
    return {"model_dir": save_tiny_model(root / "model"), "state": state, "adapter": root / "adapter"}


def _cli(*args: str) -> None:
    """Run `curlora ARGS`; its one-line error (exit code 2) raised as CurloraError for the table."""
    result = CliRunner().invoke(app, list(args))
    if result.exit_code == 2:
        raise CurloraError(" ".join(result.output.split()))
    raise AssertionError(f"exit code {result.exit_code}: {result.output[-1500:]} {result.exception!r}")


def _bench(*args: str):
    def act(tmp, ctx):
        return _cli(
            "bench", "--model", str(ctx["model_dir"]), "--suite", "paper", "--data-dir", str(tmp / "absent"),
            "--device", "cpu", "--out", str(tmp / "run"), *args,
        )  # fmt: skip

    return act


def _config(**fields):
    return lambda tmp, ctx: CURLoRAConfig(**fields)


def _sft(**fields):
    return lambda tmp, ctx: SFTRecipeConfig(**{"data": "squad.json", **fields}).validate()


def _base(state: dict, how: str) -> torch.nn.Module:
    """The adapter's base model, changed: negated, rows of every weight shuffled, or 1 % noise."""
    gen = torch.Generator().manual_seed(1)
    changed = {}
    for key, w in state.items():
        if how == "negated":
            w = -w
        elif how == "shuffled" and w.ndim == 2:
            w = w[torch.randperm(w.shape[0], generator=gen)]
        elif how == "noised" and w.ndim == 2:
            w = w + 0.01 * w.std() * torch.randn(w.shape, generator=gen)
        changed[key] = w
    model = tiny_llama()
    model.load_state_dict(changed)
    return model


def _adapter(edit=None, *, base: str = "same"):
    """Copy the saved adapter, apply `edit(folder)` (checksums dropped, as a hand edit would leave them stale
    unless the row keeps them), then load it onto the (maybe changed) base."""

    def setup(tmp, ctx):
        folder = tmp / "adapter"
        shutil.copytree(ctx["adapter"], folder)
        if edit is not None:
            edit(folder)
        return lambda: load_adapter(_base(ctx["state"], base), folder)

    setup.is_setup = True
    return setup


def _edit_config(**changes):
    def edit(folder: Path):
        (folder / ADAPTER_CHECKSUMS).unlink()
        cfg = json.loads((folder / ADAPTER_CONFIG).read_text())
        cfg.update(changes)
        (folder / ADAPTER_CONFIG).write_text(json.dumps(cfg))

    return edit


def _edit_tensors(fn):
    def edit(folder: Path):
        (folder / ADAPTER_CHECKSUMS).unlink()
        tensors = load_file(str(folder / ADAPTER_WEIGHTS))
        fn(tensors)
        save_file(tensors, str(folder / ADAPTER_WEIGHTS))

    return edit


def _first_u(tensors):
    return next(k for k in sorted(tensors) if k.endswith("curlora_U"))


def _nan_u(tensors):
    tensors[_first_u(tensors)][0, 0] = math.nan


def _int_u(tensors):
    key = _first_u(tensors)
    tensors[key] = tensors[key].to(torch.int32)


def _flip_weight_byte(folder: Path):  # checksums kept: the flipped byte is inside U's data
    data = bytearray((folder / ADAPTER_WEIGHTS).read_bytes())
    data[-3] ^= 0x40
    (folder / ADAPTER_WEIGHTS).write_bytes(bytes(data))


def _truncate(folder: Path):
    (folder / ADAPTER_CHECKSUMS).unlink()
    data = (folder / ADAPTER_WEIGHTS).read_bytes()
    (folder / ADAPTER_WEIGHTS).write_bytes(data[: len(data) // 2])


def _write(name: str, text: str, then):
    def setup(tmp, ctx):
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_text(text)
        return lambda: then(tmp / name)

    setup.is_setup = True
    return setup


def _pickle_only(tmp, ctx):
    folder = tmp / "pickled"
    folder.mkdir()
    shutil.copy(ctx["model_dir"] / "config.json", folder / "config.json")
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    return lambda: __import__("curlora.models.load", fromlist=["load_model"]).load_model(folder)


_pickle_only.is_setup = True


def _nan_json(tmp, ctx):
    return lambda: atomic_write_json(tmp / "results.json", {"ppl": math.nan})


_nan_json.is_setup = True

# -- the table ------------------------------------------------------------------------------------------------
ROWS = [
    # bench options: checked before the run folder is claimed
    ("ppl-max-tokens-0", _bench("--ppl-max-tokens", "0"), "--ppl-max-tokens must be an integer >= 1, got 0"),
    ("methods-comma", _bench("--methods", ","), "names no method"),
    ("head-lr-0", _bench("--head-lr", "0"), "--head-lr must be a finite number > 0, got 0.0"),
    ("head-lr-spec-nan", _bench("--methods", "curlora-2:head_lr=nan"), "head_lr must be a finite number > 0"),
    ("device-foo", _bench("--device", "foo"), "--device must be auto, cpu, cuda, cuda:N, mps or xpu:N, got 'foo'"),
    ("lr-nan", _bench("--lr", "nan"), "--lr must be a finite number > 0, got nan"),
    ("lr-negative", _bench("--lr", "-1"), "--lr must be a finite number > 0, got -1"),
    ("warmup-negative", _bench("--warmup-steps", "-5"), "--warmup-steps must be an integer >= 0, got -5"),
    ("eval-batch-0", _bench("--eval-batch-size", "0"), "--eval-batch-size must be an integer >= 1, got 0"),
    ("ppl-stride-0", _bench("--ppl-stride", "0"), "--ppl-stride must be an integer >= 1, got 0"),
    ("ppl-max-length-0", _bench("--ppl-max-length", "0"), "--ppl-max-length must be an integer >= 1, got 0"),
    ("lora-0", _bench("--methods", "lora-0"), "has rank 0; the rank must be an integer >= 1"),
    ("curlora-0", _bench("--methods", "curlora-0"), "has rank 0; the rank must be an integer >= 1"),
    ("sampling-bogus", _bench("--sampling", "bogus"), "--sampling must be one of inverted"),
    ("alpha-nan", _bench("--alpha", "nan"), "--alpha must be a finite number, got nan"),
    ("alpha-inf", _bench("--alpha", "inf"), "--alpha must be a finite number, got inf"),
    ("batch-0", _bench("--batch-size", "0"), "--batch-size must be an integer >= 1, got 0"),
    ("epochs-0", _bench("--epochs", "0"), "--epochs must be a finite number > 0, got 0"),
    ("max-length-0", _bench("--max-length", "0"), "--max-length must be an integer >= 1, got 0"),
    ("n-train-0", _bench("--n-train", "0"), "--n-train must be an integer >= 1, got 0"),
    ("n-eval-0", _bench("--n-eval", "0"), "--n-eval must be an integer >= 1, got 0"),
    ("seed-negative", _bench("--seeds", "-1"), "--seeds must be integers >= 0, got -1"),
    ("seeds-words", _bench("--seeds", "a,b"), "--seeds must be comma-separated integers"),
    ("method-lr-nan", _bench("--methods", "curlora-2:lr=nan"), "lr must be a finite number > 0"),
    ("method-lr-0", _bench("--methods", "curlora-2:lr=0"), "lr must be a finite number > 0"),
    ("method-alpha-inf", _bench("--methods", "lora-2:alpha=inf"), "alpha must be a finite number"),
    ("method-twice", _bench("--methods", "curlora-2,curlora-2"), "listed twice"),
    ("method-unknown", _bench("--methods", "bogus-2"), "unknown method 'bogus-2'"),
    ("method-rank-on-head", _bench("--methods", "head_only-2"), "takes no rank"),
    ("method-no-rank", _bench("--methods", "lora"), "needs a rank"),
    ("method-option-foreign", _bench("--methods", "lora-2:sampling=uniform"), "does not apply to lora"),
    ("preset-unknown", _bench("--preset", "nope"), "unknown preset 'nope'"),
    ("dtype-int8", _bench("--dtype", "int8"), "--dtype must be one of auto, float32"),
    ("suite-unknown", _bench("--suite", "nope"), "unknown suite 'nope'"),
    ("paper-data-absent", _bench("--methods", "head_only"), "absent"),
    # the CURLoRA config, in PEFT's config-error style
    ("config-r-bool", _config(r=True), "r must be a positive integer, got True"),
    ("config-r-0", _config(r=0), "r must be a positive integer, got 0"),
    ("config-r-negative", _config(r=-3), "r must be a positive integer, got -3"),
    ("config-r-float", _config(r=2.5), "r must be a positive integer, got 2.5"),
    ("config-alpha-nan", _config(alpha=math.nan), "alpha must be a finite number, got nan"),
    ("config-alpha-inf", _config(alpha=math.inf), "alpha must be a finite number, got inf"),
    ("config-alpha-text", _config(alpha="abc"), "alpha must be a finite number, got 'abc'"),
    ("config-sampling", _config(sampling="bogus"), "unknown sampling strategy 'bogus'"),
    ("config-u-dtype", _config(u_dtype="int8"), "unknown u_dtype 'int8'"),
    # sft settings: the same table
    ("sft-ppl-max-tokens-0", _sft(ppl_max_tokens=0), "--ppl-max-tokens must be an integer >= 1, got 0"),
    ("sft-lr-nan", _sft(lr=math.nan), "--lr must be a finite number > 0, got nan"),
    ("sft-rank-0", _sft(rank=0), "--rank must be an integer >= 1, got 0"),
    ("sft-epochs-0", _sft(epochs=0), "--epochs must be a finite number > 0, got 0"),
    ("sft-warmup-ratio", _sft(warmup_ratio=1.5), "--warmup-ratio must be a finite number in [0, 1), got 1.5"),
    ("sft-device", _sft(device="foo"), "--device must be auto, cpu"),
    ("sft-alpha-inf", _sft(alpha=math.inf), "--alpha must be a finite number, got inf"),
    ("sft-no-data", lambda tmp, ctx: SFTRecipeConfig().validate(), "no data given"),
    ("resolve-device-foo", lambda tmp, ctx: resolve_device("foo", "auto"), "--device must be"),
    # saved adapters: refused with the field or tensor named, never a silently empty or partial adapter
    ("adapter-u-nan", _adapter(_edit_tensors(_nan_u)), "holds NaN or Inf"),
    ("adapter-u-missing", _adapter(_edit_tensors(lambda t: t.pop(_first_u(t)))), "lacks curlora_U"),
    ("adapter-u-int", _adapter(_edit_tensors(_int_u)), "not floating point"),
    ("adapter-peft-type", _adapter(_edit_config(peft_type="LORA")), "peft_type 'LORA' but the weights are CURLoRA"),
    ("adapter-r-edited", _adapter(_edit_config(r=4)), "the field r was edited"),
    ("adapter-r-bool", _adapter(_edit_config(r=True)), "field r must be a positive integer"),
    ("adapter-alpha-text", _adapter(_edit_config(alpha="abc")), "field alpha must be a finite number"),
    ("adapter-targets", _adapter(_edit_config(target_modules=["q_proj", "k_proj"])), "saved tensor(s) found no layer"),
    ("adapter-base-negated", _adapter(base="negated"), "does not match this base model"),
    ("adapter-base-shuffled", _adapter(base="shuffled"), "does not match this base model"),
    ("adapter-base-noised", _adapter(base="noised"), "does not match this base model"),
    ("adapter-byte-flipped", _adapter(_flip_weight_byte), "changed after the adapter was saved"),
    ("adapter-truncated", _adapter(_truncate), "truncated or corrupted"),
    ("adapter-config-not-json", _adapter(lambda f: (f / ADAPTER_CONFIG).write_text("{")), "is not valid JSON"),
    ("adapter-config-missing", _adapter(lambda f: (f / ADAPTER_CONFIG).unlink()), "is missing"),
    # models and results
    ("info-config-typed", _write("cfg.json", json.dumps({"model_type": "llama", "hidden_size": "abc"}),
                                 lambda p: _cli("info", "--config", str(p))), "has a field of the wrong type"),
    ("model-pickle-only", _pickle_only, "holds only pickle weights (pytorch_model.bin)"),
    ("report-no-results", _write("run/notes.txt", "x", lambda p: _cli("report", str(p.parent))), "results.json"),
    ("results-nan", _nan_json, "Out of range float values are not JSON compliant"),
]  # fmt: skip


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("make, fragment", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input_is_one_clear_error_and_leaves_nothing(make, fragment, ctx, tmp_path):
    act = make(tmp_path, ctx) if getattr(make, "is_setup", False) else (lambda: make(tmp_path, ctx))
    before = _tree(tmp_path)
    with pytest.raises(ValueError) as caught:  # CurloraError is a ValueError, like PEFT's config errors
        act()
    message = " ".join(str(caught.value).split())
    assert fragment in message, message
    assert isinstance(caught.value, CurloraError) or fragment.startswith("Out of range"), type(caught.value)
    assert _tree(tmp_path) == before, "files were left behind or changed"
    assert not (tmp_path / "run").exists() or fragment == "results.json"


def test_the_table_covers_at_least_forty_inputs():
    assert len(ROWS) >= 40 and len({r[0] for r in ROWS}) == len(ROWS)


def test_adapters_with_the_older_four_number_fingerprint_still_load(ctx, tmp_path):
    folder = tmp_path / "adapter"
    shutil.copytree(ctx["adapter"], folder)
    (folder / ADAPTER_CHECKSUMS).unlink()
    tensors = load_file(str(folder / ADAPTER_WEIGHTS))
    for key in [k for k in tensors if k.endswith("curlora_fingerprint")]:
        assert tensors[key].numel() > 4
        tensors[key] = tensors[key][:4].clone()  # what older versions saved: the norms alone
    save_file(tensors, str(folder / ADAPTER_WEIGHTS))
    loaded = load_adapter(_base(ctx["state"], "same"), folder)
    layer = next(m for m in loaded.modules() if hasattr(m, "curlora_fingerprint"))
    assert layer.curlora_fingerprint["default"].numel() == 4
    with pytest.raises(CurloraError, match="does not match this base model"):
        load_adapter(tiny_llama(seed=7), folder)  # another base: even the old check refuses it
