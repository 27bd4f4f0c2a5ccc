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
