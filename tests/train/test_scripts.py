"""The experiment scripts in scripts/: they run end to end and compute what they say."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))


def test_learning_curve_trains_nested_shares_and_draws_them(small_data, tmp_path):
    out = tmp_path / "lc"
    cmd = [sys.executable, str(REPO / "scripts/learning_curve.py"), "--data", str(small_data["data"]), "--out", str(out),
           "--fractions", "0.5", "1", "--seeds", "0", "--epochs", "2", "--hidden", "16", "--target", "mAP=0.9"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    curve = json.loads((out / "curve.json").read_text())
    half, full = curve["summary"]
    assert (half["fraction"], full["fraction"]) == (0.5, 1.0)
    assert 0.3 * full["train_clips"] < half["train_clips"] < 0.7 * full["train_clips"]
    rows = {r["fraction"]: r for r in curve["rows"]}
    assert rows[0.5]["epochs"] == 4 and rows[1.0]["epochs"] == 2  # the same gradient steps at every share
    assert all(0 <= s["mAP"] <= 1 for s in curve["summary"]) and "per_doubling" in curve
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 0.5 |" in r.stdout and "gain per doubling" in r.stdout
    # A second call reads the runs instead of training them again.
    assert "epoch 1:" in r.stderr
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert again.returncode == 0 and "epoch 1:" not in again.stderr
    bad = subprocess.run(cmd[:-1] + ["mAP=high"], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert bad.returncode == 2 and "--target wants KEY=VALUE" in bad.stderr


def test_best_threshold_counts_matches_a_brute_force_search():
    from timeline_bounds import best_threshold_counts

    rng = np.random.default_rng(3)
    for _ in range(20):
        truth = rng.random(200) < 0.3
        score = np.round(rng.random(200) + 0.4 * truth, 2)  # ties on purpose
        cut, tp, fp, fn = best_threshold_counts(score, truth)
        best = max(2 * (p & truth).sum() / (2 * (p & truth).sum() + (p & ~truth).sum() + (~p & truth).sum())
                   for p in (score[:, None] >= np.unique(score)[None, :]).T)
        assert 2 * tp / (2 * tp + fp + fn) == pytest.approx(best)
        p = score >= cut
        assert (tp, fp, fn) == ((p & truth).sum(), (p & ~truth).sum(), (~p & truth).sum())
