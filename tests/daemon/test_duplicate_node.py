"""One node, one name: two daemons given the same node name on one real mosquitto.

Before, both used the client id ``audiocap-<node>`` and took each other's
session once a second for ever (status flapping, "lost the MQTT broker" every
second). Now the one that started later logs one line naming the cause and
the fix and stops (exit 78); the other's retained status and states stay true.
"""

from __future__ import annotations

import subprocess
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from daemon.sinks.mqtt import MqttSink
from pipeline.events import CaptionEvent

import dhelpers
from test_mqtt import _cfg, _ctx

DUPLICATE = "another audiocapd"


def _retained(port: int, topics: list[str], timeout: float = 5.0) -> dict[str, tuple[bytes, dict[str, str]]]:
    """The retained messages on ``topics``: topic -> (payload, MQTT 5 user properties)."""
    got: dict[str, tuple[bytes, dict[str, str]]] = {}
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_connect = lambda c, u, f, r, p: c.subscribe([(t, 1) for t in topics])
    client.on_subscribe = lambda *a: subscribed.set()

    def on_message(c, u, msg):
        if msg.retain:
            props = getattr(msg, "properties", None)
            got[msg.topic] = (msg.payload, dict(getattr(props, "UserProperty", None) or []))

    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert subscribed.wait(timeout)
        time.sleep(0.5)  # retained messages follow the SUBACK
    finally:
        client.disconnect()
        client.loop_stop()
    return dict(got)


def test_the_later_sink_gives_way_and_the_states_stay_true(mosquitto, subscriber_factory, caplog):
    sub = subscriber_factory(mosquitto.port, ["audiocap/kitchen/status", "audiocap/kitchen/state/Music"])
    first = MqttSink(_cfg(mosquitto.port), _ctx("kitchen"))
    first.start()
    fatal: list[tuple[int, str]] = []
    second = None
    try:
        first.on_event(CaptionEvent("m1", "start", "Music", "[Music]", 0.9, 1.8e9, None, time.time()))
        assert first.drain(5)
        assert sub.wait_for(lambda m: sub.payloads("status") == [b"online"], 5)
        time.sleep(0.2)
        second = MqttSink(_cfg(mosquitto.port), _ctx("kitchen"))
        second.on_fatal = lambda code, message: fatal.append((code, message))
        t0 = time.monotonic()
        second.start()  # it says online and Music OFF: the first must answer
        while not fatal and time.monotonic() - t0 < 10:
            time.sleep(0.05)
        settled = time.monotonic() - t0
        assert fatal and fatal[0][0] == 78, fatal
        assert "as node 'kitchen'" in fatal[0][1] and "unique [daemon] node" in fatal[0][1]
        time.sleep(2.0)  # nothing may flap afterwards
        assert first.connected and not first.yielded and not second.connected
        retained = _retained(mosquitto.port, ["audiocap/kitchen/status", "audiocap/kitchen/state/+"])
        assert retained["audiocap/kitchen/status"][0] == b"online"
        assert retained["audiocap/kitchen/status"][1]["audiocap-instance"] == first.instance
        assert retained["audiocap/kitchen/state/Music"][0] == b"ON", retained
        # Music never flipped: the newcomer said only `online` before it gave way.
        music = sub.payloads("state/Music")
        assert music and b"OFF" not in music, music
        statuses = sub.payloads("status")
        assert b"offline" not in statuses and len(statuses) <= 3, statuses
        lines = [r.getMessage() for r in caplog.records if DUPLICATE in r.getMessage()]
        assert len(lines) == 1, lines
        assert not [r for r in caplog.records if "lost the MQTT broker" in r.getMessage()]
        print(f"second sink gave way after {settled:.2f} s; status messages seen: {statuses}")
    finally:
        if second is not None:
            second.close()
        first.close()


def test_a_dead_predecessors_last_will_is_answered(mosquitto):
    """A daemon restarted after a power cut finds its predecessor's session still open
    on the broker; when that one's last will (offline) fires, the status is ours again."""
    ghost = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ghost", protocol=mqtt.MQTTv5)
    will = Properties(PacketTypes.WILLMESSAGE)
    will.UserProperty = [("audiocap-instance", "ghost"), ("audiocap-since", "1.0")]
    ghost.will_set("audiocap/porch/status", "offline", qos=1, retain=True, properties=will)
    ghost.connect("127.0.0.1", mosquitto.port)
    ghost.loop_start()
    sink = MqttSink(_cfg(mosquitto.port), _ctx("porch"))
    try:
        sink.start()
        deadline = time.monotonic() + 5
        while not sink.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        ghost.loop_stop()
        ghost.socket().close()  # dies without DISCONNECT: the broker sends its will
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            status = _retained(mosquitto.port, ["audiocap/porch/status"]).get("audiocap/porch/status")
            if status and status[0] == b"online" and status[1].get("audiocap-instance") == sink.instance:
                break
        else:
            raise AssertionError(f"retained status after the ghost's will: {status}")
        assert not sink.yielded  # the ghost is older, but said offline: nothing to give way to
    finally:
        sink.close()


def test_two_daemons_with_one_node_name_settle(bal_train_dir, classifier_dir, mosquitto, subscriber_factory):
    """Two real daemons: the second exits 78 with one line naming the cause and the fix,
    within 10 s; the first stays connected and the retained status stays its own, online."""
    sub = subscriber_factory(mosquitto.port, ["audiocap/kitchen/status"])

    def start() -> subprocess.Popen:
        return subprocess.Popen(
            dhelpers.daemon_cmd("--source", f"replay:{bal_train_dir}", "--sink", "mqtt", "--mqtt-host", "127.0.0.1",
                                "--mqtt-port", str(mosquitto.port), "--node", "kitchen",
                                "--classifier", str(classifier_dir), "--runtime", "litert"),
            cwd=dhelpers.REPO, env=dhelpers.daemon_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)

    first = start()
    second = None
    try:
        assert sub.wait_for(lambda m: sub.payloads("status") == [b"online"], 60)
        n_before = len(sub.messages)
        second = start()
        assert sub.wait_for(lambda m: len(m) > n_before, 60), "the second daemon never connected"
        t_connect = time.monotonic()
        code = second.wait(timeout=10)
        settled = time.monotonic() - t_connect
        err = second.stderr.read()
        assert code == 78, err[-2000:]
        lines = [ln for ln in err.splitlines() if DUPLICATE in ln]
        assert len(lines) == 1 and "as node 'kitchen'" in lines[0] and "unique [daemon] node" in lines[0], err
        time.sleep(3)  # the first must not flap or complain
        assert first.poll() is None
        status = _retained(mosquitto.port, ["audiocap/kitchen/status"])["audiocap/kitchen/status"]
        assert status[0] == b"online" and status[1]["audiocap-pid"] == str(first.pid), status
        flips = sub.payloads("status")[n_before:]
        assert b"offline" not in flips, flips
        print(f"second daemon exited 78 {settled:.2f} s after it connected; status messages since: {flips}")
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(10)
    err = first.stderr.read()
    assert DUPLICATE not in err and "lost the MQTT broker" not in err, err[-2000:]


def test_mqtt_3_1_1_still_delivers_and_two_daemons_do_not_knock_each_other_off(mosquitto, subscriber_factory):
    """[mqtt] protocol = "3.1.1" (a broker without MQTT 5): no instance properties, so no
    detection, but each process has its own client id: both stay connected, no flapping."""
    sub = subscriber_factory(mosquitto.port, ["audiocap/old/#"])
    sinks = [MqttSink(_cfg(mosquitto.port, protocol="3.1.1"), _ctx("old")) for _ in range(2)]
    try:
        for s in sinks:
            s.start()
        sinks[0].on_event(CaptionEvent("o1", "start", "Music", "[Music]", 0.9, 1.8e9, None, time.time()))
        assert sinks[0].drain(5)
        time.sleep(3)
        assert all(s.connected and not s.yielded for s in sinks)
        assert sub.payloads("/status") == [b"online", b"online"]  # once each: nobody was knocked off
        assert [e["event_id"] for e in sub.events()] == ["o1"]
    finally:
        for s in sinks:
            s.close()
