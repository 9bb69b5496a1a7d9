"""fit under tf.distribute: MultiWorkerMirroredStrategy with two worker processes on loopback."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from recordmaker import write_label_files, write_noisy_dir

REPO = Path(__file__).resolve().parents[2]


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def noisy_data(tmp_path_factory):
    """Data on which validation mAP falls after the first epoch (recordmaker.write_noisy_dir)."""
    root = tmp_path_factory.mktemp("noisy")
    write_label_files(root)
    return write_noisy_dir(root / "records")


# Wide, no dropout, a high learning rate: on noisy_data the first epoch is the best one.
OVERFIT = ["--epochs", "3", "--hidden", "256", "--dropout", "0", "--learning-rate", "0.01"]


@pytest.mark.slow
def test_two_workers_on_loopback_keep_the_best_epoch(noisy_data, tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    procs = []
    for i in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
        cmd = [sys.executable, "-m", "train", "fit", "--data", str(noisy_data), "--out", str(tmp_path / f"run{i}"),
               "--strategy", "multiworker", *OVERFIT, "--quiet"]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=300))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    losses = [re.findall(r"epoch (\d): loss ([0-9.]+) \(\d+ steps, 2 replicas\)", err) for _, err in outs]
    assert len(losses[0]) == 3 and losses[0] == losses[1]  # one synchronous model, both workers agree
    assert float(losses[0][-1][1]) < float(losses[0][0][1])  # it learns (the training loss falls)
    assert (tmp_path / "run0" / "model.keras").is_file()  # the chief writes the run...
    assert not (tmp_path / "run1").exists()  # ...the other worker does not
    info = json.loads((tmp_path / "run0" / "metrics.json").read_text())
    val_map = json.loads((tmp_path / "run0" / "history.json").read_text())["val_map"]
    best = int(np.argmax(val_map)) + 1
    assert best < 3, f"validation mAP {val_map} no longer falls after an early epoch: this test cannot see the last kept"
    assert info["best_epochs"] == [best]
    # The written model is the best epoch's, not the last one's.
    assert info["metrics"]["mAP"] == pytest.approx(max(val_map), abs=1e-5)
    assert info["metrics"]["mAP"] > val_map[-1] + 1e-3


def test_mirrored_keeps_the_best_epoch_and_last_epoch_keeps_the_last(noisy_data, tmp_path):
    from train import fit as fit_mod

    common = dict(data=[str(noisy_data)], strategy="mirrored", epochs=3, hidden=256, dropout=0.0,
                  learning_rate=0.01, verbose=0)
    best_run = fit_mod.fit(fit_mod.FitConfig(out=str(tmp_path / "best"), **common))
    val_map = json.loads((best_run / "history.json").read_text())["val_map"]
    assert int(np.argmax(val_map)) < 2, val_map
    got = json.loads((best_run / "metrics.json").read_text())["metrics"]["mAP"]
    assert got == pytest.approx(max(val_map), abs=1e-5) and got > val_map[-1] + 1e-3
    last_run = fit_mod.fit(fit_mod.FitConfig(out=str(tmp_path / "last"), select_best=False, **common))
    last_map = json.loads((last_run / "history.json").read_text())["val_map"]
    assert json.loads((last_run / "metrics.json").read_text())["metrics"]["mAP"] == pytest.approx(last_map[-1], abs=1e-5)


def test_mirrored_strategy_in_process(small_data, tmp_path):
    from train import fit as fit_mod

    cfg = fit_mod.FitConfig(data=[str(small_data["data"])], out=str(tmp_path / "m"), strategy="mirrored",
                            hidden=32, epochs=2, verbose=0)
    run = fit_mod.fit(cfg)
    hist = json.loads((run / "history.json").read_text())
    assert len(hist["loss"]) == 2 and hist["loss"][1] < hist["loss"][0]


def test_multiworker_without_tf_config_is_a_clear_error(small_data, tmp_path, monkeypatch):
    from train import fit as fit_mod

    monkeypatch.delenv("TF_CONFIG", raising=False)
    cfg = fit_mod.FitConfig(data=[str(small_data["data"])], out=str(tmp_path / "x"), strategy="multiworker")
    with pytest.raises(ValueError, match="TF_CONFIG"):
        fit_mod.fit(cfg)
