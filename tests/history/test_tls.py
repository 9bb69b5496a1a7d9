"""The history over TLS with a client certificate, on a real mosquitto TLS listener (the
daemon tests' CA and certificates)."""

from __future__ import annotations

import json
import subprocess
import time

import hhelpers as hh
from test_mqtt_tls import pki, tls_broker  # noqa: F401  (fixture: a CA, a server and a client certificate)


def test_history_over_tls_with_a_client_certificate(pki, tmp_path):  # noqa: F811
    broker = tls_broker(pki, tmp_path, client_certificate=True)
    conf = tmp_path / "history.toml"
    conf.write_text(f'[mqtt]\ntls = true\nca_file = "{pki / "ca.crt"}"\ncert_file = "{pki / "client.crt"}"\n'
                    f'key_file = "{pki / "client.key"}"\n')
    history = hh.History(tmp_path, broker.port, None, "--config", str(conf))
    try:
        history.start()
        e = hh.event("start", "tls1", "Music", time.time() - 3)
        subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "--cafile", str(pki / "ca.crt"),
                        "--cert", str(pki / "client.crt"), "--key", str(pki / "client.key"), "-q", "1",
                        "-t", "audiocap/kitchen/events", "-m", json.dumps(e)], check=True, timeout=15)
        rows = hh.wait_rows(history, lambda r: len(r) == 1, 10, "the caption over TLS")
        assert rows[0]["event_id"] == "tls1"
        assert history.stop() < 2.0
    finally:
        hh.kill_all([history.proc] if history.proc else [])
        broker.stop()
