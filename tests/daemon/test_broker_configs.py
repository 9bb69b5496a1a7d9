"""The shipped broker configurations, on the Debian mosquitto that runs them.

``display/mosquitto-local.conf`` is anonymous, so it must listen on loopback
only: every listening socket of the broker is read with ``ss -ltnp``, and a
network namespace the test makes (a veth pair on test-made addresses) must
be refused on both ports. ``display/mosquitto.conf`` must refuse an anonymous
client on every listener. Nothing here connects to the machine's own
non-loopback addresses.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

import dhelpers

DISPLAY = dhelpers.REPO / "display"
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _start(conf_text: str, workdir: Path, ports: list[int]) -> subprocess.Popen:
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"user root\nlog_dest file {workdir / 'mosquitto.log'}\n" + conf_text)
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for port in ports:
            dhelpers.wait_port(port)
    except RuntimeError:
        proc.kill()
        log = (workdir / "mosquitto.log").read_text() if (workdir / "mosquitto.log").exists() else ""
        raise RuntimeError(f"mosquitto did not start with {conf}: {log[-1500:]}") from None
    return proc


def _listening(pid: int) -> list[tuple[str, int]]:
    """Every TCP socket process ``pid`` listens on, as (address, port), read from ``ss -ltnp``."""
    out = subprocess.run(["ss", "-H", "-ltnp"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        if f"pid={pid}," not in line:
            continue
        local = line.split()[3]  # "127.0.0.1:1884", "*:9001", "[::1]:9001", "*%lo:9001"
        addr, _, port = local.rpartition(":")
        found.append((addr.strip("[]"), int(port)))
    return found


def _local_conf(ports: dict[str, int]) -> str:
    """display/mosquitto-local.conf as shipped, with free ports and the display directory made absolute."""
    text = (DISPLAY / "mosquitto-local.conf").read_text()
    for shipped, port in ports.items():
        text, n = re.subn(rf"^listener {shipped} ", f"listener {port} ", text, flags=re.M)
        assert n == 1, f"no 'listener {shipped} ...' line in display/mosquitto-local.conf"
    return text.replace("http_dir display", f"http_dir {DISPLAY}")


@pytest.fixture
def local_broker(tmp_path):
    if shutil.which("mosquitto") is None or shutil.which("ss") is None:
        pytest.skip("mosquitto or ss (iproute2) is not installed (scripts/setup installs them)")
    ports = {"1884": dhelpers.free_port(), "9001": dhelpers.free_port()}
    proc = _start(_local_conf(ports), tmp_path, list(ports.values()))
    yield proc, ports
    proc.terminate()
    proc.wait(10)


def test_local_display_broker_listens_on_loopback_only(local_broker):
    proc, ports = local_broker
    sockets = _listening(proc.pid)
    assert {p for _, p in sockets} == set(ports.values()), sockets
    exposed = [(a, p) for a, p in sockets if a not in LOOPBACK]
    assert not exposed, f"listening beyond loopback: {exposed} (all sockets: {sockets})"
    # ...and it still works there: the page over http, MQTT over both listeners.
    page = urllib.request.urlopen(f"http://127.0.0.1:{ports['9001']}/index.html", timeout=5).read()
    assert b"<html" in page
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    for port, transport in ((ports["1884"], "tcp"), (ports["9001"], "websockets")):
        client = mqtt.Client(CallbackAPIVersion.VERSION2, transport=transport)
        assert client.connect("127.0.0.1", port, keepalive=10) == 0
        client.loop_start()
        try:
            assert client.publish("audiocap/t/status", "online", qos=1).wait_for_publish(5) is None
        finally:
            client.disconnect()
            client.loop_stop()


class _Netns:
    """A network namespace joined to this one by a veth pair with test-made addresses
    (10.213.x.1 here, 10.213.x.2 there): the view of another machine on the LAN."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.name, self.veth = f"acap{tag}", f"acv{tag}"
        octet = int(tag[:2], 16) % 250 + 1
        self.host_ip, self.peer_ip = f"10.213.{octet}.1", f"10.213.{octet}.2"

    def __enter__(self) -> "_Netns":
        steps = [
            ["ip", "netns", "add", self.name],
            ["ip", "link", "add", self.veth, "type", "veth", "peer", "name", f"{self.veth}p"],
            ["ip", "link", "set", f"{self.veth}p", "netns", self.name],
            ["ip", "addr", "add", f"{self.host_ip}/30", "dev", self.veth],
            ["ip", "link", "set", self.veth, "up"],
            ["ip", "netns", "exec", self.name, "ip", "addr", "add", f"{self.peer_ip}/30", "dev", f"{self.veth}p"],
            ["ip", "netns", "exec", self.name, "ip", "link", "set", f"{self.veth}p", "up"],
        ]
        for cmd in steps:
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                self.__exit__()
                pytest.skip(f"cannot make a network namespace ({' '.join(cmd)}: {r.stderr.strip()})")
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)

    def connect(self, port: int) -> int:
        """A TCP connection from inside the namespace to the host's veth address: 0 or the errno."""
        code = (f"import socket\ns = socket.socket()\ns.settimeout(3)\n"
                f"print(s.connect_ex(({self.host_ip!r}, {port})))")
        r = subprocess.run(["ip", "netns", "exec", self.name, "python3", "-c", code], capture_output=True,
                           text=True, timeout=20)
        assert r.returncode == 0, r.stderr
        return int(r.stdout)


def test_local_display_broker_refuses_another_machine(local_broker):
    """From a namespace the test makes, both ports are refused; a socket bound to every
    address is reachable the same way, so the refusal is the broker's binding."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("making a network namespace needs root and iproute2")
    proc, ports = local_broker
    with _Netns() as ns:
        with socket.socket() as control:
            control.bind(("0.0.0.0", 0))
            control.listen(1)
            assert ns.connect(control.getsockname()[1]) == 0, "the namespace cannot reach the host at all"
        for name, port in ports.items():
            got = ns.connect(port)
            assert got == errno.ECONNREFUSED, f"listener {name}: {os.strerror(got) if got else 'connected'}"


def test_production_broker_config_refuses_anonymous_clients_on_every_listener(tmp_path):
    """display/mosquitto.conf as shipped (only ports and paths made local, addresses
    pinned to loopback for the test): no listener lets a client in without a password."""
    if shutil.which("mosquitto") is None or shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto is not installed (scripts/setup installs it)")
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    text = (DISPLAY / "mosquitto.conf").read_text()
    listeners = re.findall(r"^listener (\d+)$", text, flags=re.M)
    assert listeners, "no listener in display/mosquitto.conf"
    ports = {p: dhelpers.free_port() for p in listeners}
    text = re.sub(r"^listener (\d+)$", lambda m: f"listener {ports[m.group(1)]} 127.0.0.1\nsocket_domain ipv4",
                  text, flags=re.M)
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "audiocapd", "secret"], check=True)
    for shipped, local in (("/etc/mosquitto/audiocap.passwd", passwd), ("/etc/mosquitto/audiocap.acl",
                           DISPLAY / "mosquitto.acl"), ("/usr/local/share/audiocap/display", DISPLAY)):
        text = text.replace(shipped, str(local))
    protocols = re.findall(r"^listener \d+ 127.0.0.1\nsocket_domain ipv4\nprotocol (\w+)", text, flags=re.M)
    proc = _start(text, tmp_path, list(ports.values()))
    try:
        for port, protocol in zip(ports.values(), protocols):
            transport = "websockets" if protocol == "websockets" else "tcp"
            for user in (None, "audiocapd"):
                result: list = []
                client = mqtt.Client(CallbackAPIVersion.VERSION2, transport=transport)
                if user:
                    client.username_pw_set(user, "secret")
                client.on_connect = lambda c, u, f, reason, p: result.append(reason)
                client.connect("127.0.0.1", port, keepalive=10)
                deadline = time.monotonic() + 5
                while not result and time.monotonic() < deadline:
                    client.loop(0.1)
                client.disconnect()
                assert result, f"listener {port} ({protocol}) did not answer CONNECT"
                assert result[0].is_failure == (user is None), (port, protocol, user, result[0])
    finally:
        proc.terminate()
        proc.wait(10)
