"""A bounded, seeded fuzz of the adapter loader: random byte flips and truncations of adapter_model.safetensors and
adapter_config.json. Each case either loads an adapter identical to the saved one or raises CurloraError: never a
raw exception, never a silently different adapter."""

import random
import shutil

import pytest
import torch
from peft.utils import get_peft_model_state_dict

import curlora  # noqa: F401
from curlora.errors import CurloraError
from curlora.testing import tiny_llama
from curlora.tuner.saved import ADAPTER_CHECKSUMS, ADAPTER_CONFIG, ADAPTER_WEIGHTS, load_adapter

CASES = 50


@pytest.fixture(scope="module")
def saved(tmp_path_factory, random_curlora_adapter):
    folder = tmp_path_factory.mktemp("fuzz") / "adapter"
    state, model = random_curlora_adapter(folder)
    reference = {k: v.clone() for k, v in get_peft_model_state_dict(model).items()}
    return folder, state, reference, model.peft_config["default"]


def _mutate(data: bytes, rng: random.Random) -> bytes:
    if rng.random() < 0.3:
        return data[: rng.randrange(len(data))]  # truncated
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)  # bit flips
    return bytes(out)


@pytest.mark.parametrize("case", range(CASES))
def test_a_corrupted_adapter_loads_identically_or_raises_curlora_error(case, saved, tmp_path):
    folder, state, reference, config = saved
    rng = random.Random(case)
    work = tmp_path / "adapter"
    shutil.copytree(folder, work)
    if case % 5 == 4:  # some cases without checksums: the structural checks alone must hold
        (work / ADAPTER_CHECKSUMS).unlink()
    target = work / (ADAPTER_WEIGHTS if case % 2 == 0 else ADAPTER_CONFIG)
    target.write_bytes(_mutate(target.read_bytes(), rng))
    base = tiny_llama()
    base.load_state_dict(state)
    try:
        loaded = load_adapter(base, work)
    except CurloraError:
        return
    # it loaded: it must be the saved adapter, tensor for tensor and setting for setting that changes numbers
    held = get_peft_model_state_dict(loaded)
    assert held.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(held[key], value), key
    now = loaded.peft_config["default"]
    for field in ("r", "alpha", "sampling", "seed", "u_dtype", "target_modules", "replacement"):
        assert getattr(now, field) == getattr(config, field), field
