"""Fixtures for the study report tests; the synthetic data itself is made in study_data.py."""

from __future__ import annotations

import json

import pytest
from study_data import FINDINGS, make_study


@pytest.fixture
def study():
    return make_study()


@pytest.fixture
def write_study(tmp_path):
    """write_study(results, findings=FINDINGS) -> the study folder."""

    def write(results: dict, findings: str = FINDINGS):
        folder = tmp_path / "study2"
        folder.mkdir(exist_ok=True)
        (folder / "results.json").write_text(json.dumps(results))
        (folder / "findings.md").write_text(findings)
        return folder

    return write
