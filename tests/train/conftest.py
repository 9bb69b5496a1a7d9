"""Fixtures for the train tests (the files they write come from recordmaker.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recordmaker import write_clean_dir, write_label_files  # noqa: E402


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> dict:
    """A learnable dataset (12 files x 50 clips) with label files beside it."""
    root = tmp_path_factory.mktemp("small")
    csv_path, onto = write_label_files(root)
    data = write_clean_dir(root / "records", 12, 50, seed=1)
    return {"root": root, "data": data, "labels_csv": csv_path, "ontology": onto}
