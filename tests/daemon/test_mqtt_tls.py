"""MQTT over TLS with a CA and a client certificate, against a real mosquitto TLS listener."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

import dhelpers
from daemon.config import MqttConfig
from daemon.sinks.mqtt import MqttSink
from daemon.sinks import SinkContext
from pipeline.events import CaptionEvent


def _openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def pki(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path / "pki"
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=audiocap test CA",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, cn in (("server", "localhost"), ("client", "audiocap-client")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-out", f"{name}.crt", "-extfile", "san.cnf", cwd=d)
    return d


def tls_broker(pki, tmp_path, client_certificate: bool) -> dhelpers.Mosquitto:
    """A started Mosquitto whose listener speaks TLS with the pki's server
    certificate; with ``client_certificate`` clients must present one of its CA's."""
    workdir = tmp_path / "broker"
    workdir.mkdir()
    broker = dhelpers.Mosquitto(workdir)
    broker.conf.write_text(broker.conf.read_text() + (
        f"cafile {pki / 'ca.crt'}\ncertfile {pki / 'server.crt'}\nkeyfile {pki / 'server.key'}\n"
        + ("require_certificate true\n" if client_certificate else "")))
    broker.start()
    return broker


def test_tls_with_client_certificate(pki, tmp_path, caplog):
    broker = tls_broker(pki, tmp_path, client_certificate=True)
    ctx = SinkContext("tls", "file:x.wav", "m@1", ("Speech", "Animal", "Music", "Vehicle"), {})
    base = dict(host="127.0.0.1", port=broker.port, tls=True, ca_file=str(pki / "ca.crt"),
                reconnect_min_s=1, reconnect_max_s=1)
    try:
        sink = MqttSink(MqttConfig(**base, cert_file=str(pki / "client.crt"), key_file=str(pki / "client.key")), ctx)
        sink.start()
        sink.on_event(CaptionEvent("e1", "start", "Music", "[Music]", 0.9, 1.8e9, None, time.time()))
        assert sink.drain(10) and sink.connected
        sink.close()
        # Without the client certificate the broker refuses the handshake: never "connected".
        nocert = MqttSink(MqttConfig(**base), ctx)
        nocert.start()
        nocert.on_event(CaptionEvent("e2", "start", "Music", "[Music]", 0.9, 1.8e9, None, time.time()))
        assert not nocert.drain(2) and not nocert.connected
        nocert.close()
    finally:
        broker.stop()


def test_tls_failure_is_logged_with_its_reason(pki, tmp_path, caplog):
    broker = tls_broker(pki, tmp_path, client_certificate=False)
    ctx = SinkContext("tlsbad", "file:x.wav", "m@1", ("Speech", "Animal", "Music", "Vehicle"), {})
    # The client trusts another CA (its own certificate): the server's cannot be verified.
    sink = MqttSink(MqttConfig(host="127.0.0.1", port=broker.port, tls=True, ca_file=str(pki / "client.crt"),
                               reconnect_min_s=1, reconnect_max_s=1), ctx)
    try:
        sink.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any("TLS" in r.getMessage() for r in caplog.records):
            time.sleep(0.1)
        lines = [r.getMessage() for r in caplog.records if "TLS handshake" in r.getMessage()]
        assert len(lines) == 1 and "certificate verification failed" in lines[0], lines
        assert not sink.connected
    finally:
        sink.close()
        broker.stop()
