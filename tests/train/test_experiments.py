"""audiocap-train experiments on the small written dataset (two settings, both protocols)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from train import experiments
from train.__main__ import main


def test_grid_writes_table_chart_and_markdown(small_data, tmp_path):
    md = tmp_path / "doc.md"
    md.write_text(f"# doc\n\nbefore\n{experiments.MARK_BEGIN}\nold table\n{experiments.MARK_END}\nafter\n")
    rc = main(["experiments", "--data", str(small_data["data"]), "--out", str(tmp_path / "exp"), "--epochs", "1",
               "--limit", "2", "--markdown", str(md)])
    assert rc == 0
    results = json.loads((tmp_path / "exp" / "results.json").read_text())
    assert [(r["setting"], r["protocol"]) for r in results] == [
        ("cnn-bce-b20-norm-pool3", "grouped"), ("cnn-bce-b20-norm-pool3", "paper"),
        ("dense-bce-b20-norm", "grouped"), ("dense-bce-b20-norm", "paper"),
    ]
    for r in results:
        assert (r["videos_on_both_sides"] > 0) == (r["protocol"] == "paper")
        assert (r["val_rows_seen_in_training"] > 0) == (r["protocol"] == "paper")
        assert r["paper_accuracy"] == r["binary_accuracy"]  # BCE: Keras prints binary accuracy
    text = md.read_text()
    assert "old table" not in text and "before" in text and "after" in text
    assert "| cnn-bce-b20-norm-pool3 | paper |" in text and "the paper's figure" in text
    assert (tmp_path / "exp" / "experiments.png").read_bytes()[:4] == b"\x89PNG"


def test_grid_definitions():
    assert len(experiments.grid(full=True)) == 36
    one = experiments.grid()
    assert one[0] == experiments.BASE and len({experiments.setting_name(s) for s in one}) == len(one)


def test_keras_accuracy_of_an_always_no_model_is_75_percent():
    y = np.eye(4)[np.arange(100) % 4]
    assert experiments.keras_accuracy("binary", y, np.zeros_like(y)) == pytest.approx(0.75)
    assert experiments.keras_accuracy("categorical", y, y) == 1.0
