"""fit under tf.distribute: MultiWorkerMirroredStrategy with two worker processes on loopback."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.slow
def test_two_workers_on_loopback(small_data, tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    procs = []
    for i in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
        cmd = [sys.executable, "-m", "train", "fit", "--data", str(small_data["data"]), "--out", str(tmp_path / f"run{i}"),
               "--strategy", "multiworker", "--epochs", "2", "--hidden", "32", "--quiet"]
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
    assert len(losses[0]) == 2 and losses[0] == losses[1]  # one synchronous model, both workers agree
    assert float(losses[0][1][1]) < float(losses[0][0][1])  # it learns
    assert (tmp_path / "run0" / "model.keras").is_file()  # the chief writes the run...
    assert not (tmp_path / "run1").exists()  # ...the other worker does not
    info = json.loads((tmp_path / "run0" / "metrics.json").read_text())
    assert info["metrics"]["mAP"] > 0.5


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
