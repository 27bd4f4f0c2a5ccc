"""Shared test fixtures. Tests mirror the package (tests/tuner/ for src/curlora/tuner/, ...)."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: the real paper data (GLUE, Sentiment140, WikiText-2, SQuAD sample, VADER), beside the repository; never copied
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The shared reference data folder; the test is skipped, with the reason, where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared reference data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def random_curlora_adapter():
    """Makes a tiny Llama's CURLoRA adapter (r = 2) with random U (so a broken load cannot pass as zero), saved with
    checksums into a folder; returns the base weights before wrapping and the wrapped model."""
    import torch
    from peft import get_peft_model

    from curlora.testing import tiny_llama
    from curlora.tuner.config import CURLoRAConfig
    from curlora.tuner.saved import save_adapter

    def make(folder: Path):
        torch.manual_seed(0)
        base = tiny_llama()
        state = {k: v.clone() for k, v in base.state_dict().items()}
        model = get_peft_model(base, CURLoRAConfig(r=2))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "curlora_U" in name:
                    p.normal_()
        save_adapter(model, folder)
        return state, model

    return make
