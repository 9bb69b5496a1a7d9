"""The history's systemd unit (verify, security exposure) and its notify protocol with a real socket."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time

import hhelpers as hh
from test_systemd import analyze, verify_in_root  # noqa: F401  (the daemon unit tests' fixture)

UNIT = hh.REPO / "systemd" / "audiocap-history.service"


def test_unit_verifies_and_is_hardened(analyze, tmp_path):  # noqa: F811
    r = verify_in_root(analyze, UNIT, tmp_path)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
    probe = subprocess.run([analyze, "security", "--help"], capture_output=True, text=True)
    if "--offline" in probe.stdout:
        r = subprocess.run([analyze, "security", "--offline=yes", str(UNIT)], capture_output=True, text=True,
                           cwd=tmp_path, timeout=60)
        m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout + r.stderr)
        assert m and float(m.group(1)) <= 2.0, r.stdout[-2000:]
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "DynamicUser=yes", "StateDirectory=",
                 "RestartPreventExitStatus=65 73 78"):
        assert line in text, line
    # The example configuration is valid as shipped (its database as under systemd).
    r = subprocess.run([sys.executable, "-m", "history", "--config", str(UNIT.parent / "history.toml"),
                        "--check-config"], cwd=hh.REPO, capture_output=True, text=True, timeout=60,
                       env=hh.dhelpers.daemon_env({"STATE_DIRECTORY": str(tmp_path)}))
    assert r.returncode == 0 and "configuration ok" in r.stdout, r.stderr


def test_ready_watchdog_and_stopping_reach_the_notify_socket(broker, tmp_path):
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(15)
    h = hh.History(tmp_path, broker.port, env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"})
    h.start(wait_online=False)
    got: list[str] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not (any("READY=1" in m for m in got)
                                               and sum("WATCHDOG=1" in m for m in got) >= 2):
        got.append(sock.recv(4096).decode())
    assert any("READY=1" in m for m in got) and sum("WATCHDOG=1" in m for m in got) >= 2, got
    took = hh.dhelpers.stop_process(h.proc, signal.SIGTERM)
    assert took < 2.0 and h.proc.returncode == 0
    rest = []
    sock.settimeout(0.5)
    try:
        while True:
            rest.append(sock.recv(4096).decode())
    except socket.timeout:
        pass
    assert any("STOPPING=1" in m for m in rest), rest
    sock.close()
