"""``audiocapd --retire-node NAME`` on a real mosquitto: afterwards no retained topic
of that node remains, and the other nodes' (one whose name starts the same) are untouched."""

from __future__ import annotations

import time

from daemon.sinks.mqtt import MqttSink
from pipeline.events import CaptionEvent

import dhelpers
from test_mqtt import _cfg, _ctx


def _all_retained(port: int) -> dict[str, bytes]:
    """Every retained message on the broker (a subscription to '#')."""
    from test_duplicate_node import _retained

    return {t: p for t, (p, _) in _retained(port, ["#"]).items()}


def _node_ran(port: int, node: str, stop: bool = True) -> MqttSink:
    """A node's sink: online, discovery, a caption (state ON), then stopped (status offline)."""
    sink = MqttSink(_cfg(port), _ctx(node))
    sink.start()
    sink.on_event(CaptionEvent(f"{node}-1", "start", "Music", "[Music]", 0.9, 1.8e9, None, time.time()))
    assert sink.drain(10)
    if stop:
        sink.close()
    return sink


def _publish_retained(port: int, topic: str, payload: str) -> None:
    import paho.mqtt.publish as publish

    publish.single(topic, payload, qos=1, retain=True, hostname="127.0.0.1", port=port)


def _retire(port: int, node: str):
    return dhelpers.run_daemon("--retire-node", node, "--mqtt-host", "127.0.0.1", "--mqtt-port", str(port),
                               timeout=60)


def test_retire_node_leaves_no_retained_topic_of_it(mosquitto):
    for node in ("gone", "gone_2", "keep"):
        _node_ran(mosquitto.port, node)
        # The caption history's retained digest of the node (docs/history.md).
        _publish_retained(mosquitto.port, f"audiocap/_history/digest/{node}", '{"node": "%s"}' % node)
    before = _all_retained(mosquitto.port)
    mine = {t for t in before if t.endswith("/gone") or "/gone/" in t or "/gone_" in t and "gone_2" not in t}
    assert "audiocap/gone/status" in mine and "homeassistant/binary_sensor/gone_music/config" in mine
    assert "audiocap/_history/digest/gone" in mine
    assert len(mine) == 1 + 4 + 6 + 1, sorted(mine)  # status, 4 states, 4 binary sensors + event + level, digest
    r = _retire(mosquitto.port, "gone")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"cleared {len(mine)} retained topic(s)" in r.stdout, r.stdout
    after = _all_retained(mosquitto.port)
    assert not mine & after.keys(), sorted(mine & after.keys())
    assert {t: p for t, p in before.items() if t not in mine} == after  # the others are untouched
    # Again: nothing left, and the nodes that are there are named (a typo shows).
    r = _retire(mosquitto.port, "gone")
    assert r.returncode == 0 and "nothing retained for node 'gone'" in r.stdout and "gone_2, keep" in r.stdout


def test_an_online_node_is_refused(mosquitto):
    sink = _node_ran(mosquitto.port, "live", stop=False)
    try:
        r = _retire(mosquitto.port, "live")
        lines = dhelpers.error_lines(r.stderr)
        assert r.returncode == 75 and len(lines) == 1 and "node 'live' is online" in lines[0], r.stderr
        assert _all_retained(mosquitto.port)["audiocap/live/status"] == b"online"
    finally:
        sink.close()
    assert _retire(mosquitto.port, "live").returncode == 0
    assert not [t for t in _all_retained(mosquitto.port) if "live" in t]


def test_an_unreachable_broker_is_one_line():
    r = _retire(dhelpers.free_port(), "any")
    lines = dhelpers.error_lines(r.stderr)
    assert r.returncode == 69 and len(lines) == 1 and "Connection refused" in lines[0], r.stderr
