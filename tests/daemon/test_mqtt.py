"""The MQTT sink against a real mosquitto: topics, retained status/state, LWT, discovery, queueing."""

from __future__ import annotations

import json
import time


from daemon.config import MqttConfig
from daemon.sinks import SinkContext
from daemon.sinks.mqtt import MqttSink
from pipeline.events import CaptionEvent

import dhelpers

CLASSES = ("Speech", "Animal", "Music", "Vehicle")


def _ctx(node: str = "testnode") -> SinkContext:
    return SinkContext(node=node, source="file:x.wav", model="m@1", classes=CLASSES,
                       captions={"Speech": "[Speech]", "Animal": "[Animal sounds]", "Music": "[Music]",
                                 "Vehicle": "[Vehicle]"})


def _cfg(port: int, **kw) -> MqttConfig:
    base = dict(host="127.0.0.1", port=port, reconnect_min_s=1, reconnect_max_s=1)
    base.update(kw)
    return MqttConfig(**base)


def _events(n: int, t0: float = 1_800_000_000.0) -> list[CaptionEvent]:
    out = []
    for i in range(n):
        label = CLASSES[i % 4]
        out.append(CaptionEvent(f"e{i}", "start", label, f"[{label}]", 0.9, t0 + i, None, time.time()))
        out.append(CaptionEvent(f"e{i}", "end", label, f"[{label}]", 0.9, t0 + i, t0 + i + 0.5, time.time()))
    return out


def test_topics_status_state_discovery_and_offline(mosquitto, subscriber_factory):
    sub = subscriber_factory(mosquitto.port, ["audiocap/#", "homeassistant/#"])
    sink = MqttSink(_cfg(mosquitto.port), _ctx())
    sink.start()
    try:
        # A binary sensor per class, the event entity and the level sensor.
        assert sub.wait_for(lambda m: len([x for x in m if x[0].endswith("/config")]) == 6, 10)
        assert sub.payloads("audiocap/testnode/status") == [b"online"]
        disc = json.loads(sub.payloads("homeassistant/binary_sensor/testnode_music/config")[0])
        assert disc["state_topic"] == "audiocap/testnode/state/Music"
        assert disc["availability_topic"] == "audiocap/testnode/status"
        assert disc["unique_id"] == "audiocap_testnode_music"
        for ev in _events(2):
            sink.on_event(ev)
        sink.on_scores(1.0, 1.96, [0.1, 0.2, 0.3, 0.4], time.time(), -23.45)
        assert sink.drain(5)
        assert sub.wait_for(lambda m: len([x for x in m if x[0].endswith("/events")]) == 4, 5)
        evs = sub.events()
        assert [(e["event_id"], e["type"]) for e in evs] == [("e0", "start"), ("e0", "end"), ("e1", "start"),
                                                             ("e1", "end")]
        assert evs[1]["end"] == "2027-01-15T08:00:00.500Z" and evs[0]["model"] == "m@1"
        assert sub.wait_for(lambda m: any(t.endswith("/scores") for t, _, _ in m), 5)
        scores = json.loads(sub.payloads("/scores")[0])
        assert scores["scores"] == {"Speech": 0.1, "Animal": 0.2, "Music": 0.3, "Vehicle": 0.4}
        assert scores["level_dbfs"] == -23.4 or scores["level_dbfs"] == -23.5  # rounded to 0.1 dB
        # Each caption start also goes to the event entity's topic, as an event_type.
        assert sub.wait_for(lambda m: len([x for x in m if x[0].endswith("/onsets")]) == 2, 5)
        onsets = [json.loads(p) for p in sub.payloads("/onsets")]
        assert [(o["event_type"], o["event_id"], o["urgent"]) for o in onsets] == [("Speech", "e0", False),
                                                                                   ("Animal", "e1", False)]
        assert sub.payloads("/state/Speech")[-1] == b"OFF"
        # Home Assistant restarts: discovery is sent again.
        n_before = len(sub.payloads("/config"))
        sub.client.publish("homeassistant/status", "online", qos=1)
        assert sub.wait_for(lambda m: len([x for x in m if x[0].endswith("/config")]) >= n_before + 6, 5)
        assert sink.latencies() and all(0 <= x < 5 for x in sink.latencies())
    finally:
        sink.close()
    # A late subscriber sees the retained state of the node.
    late = subscriber_factory(mosquitto.port, ["audiocap/testnode/status", "audiocap/testnode/state/+"])
    assert late.wait_for(lambda m: len(m) >= 5, 5)
    retained = {t: (p, r) for t, p, r in late.messages}
    assert retained["audiocap/testnode/status"] == (b"offline", True)
    assert retained["audiocap/testnode/state/Music"] == (b"OFF", True)


def test_broker_down_at_start_queues_in_order(tmp_path, subscriber_factory):
    broker = dhelpers.Mosquitto(tmp_path)
    sink = MqttSink(_cfg(broker.port), _ctx("late"))
    sink.start()  # nothing listens yet: must not block or raise
    events = _events(30)
    for ev in events:
        sink.on_event(ev)
    assert not sink.connected and sink.queue_depth() == 150  # events + states + onsets
    broker.start()
    try:
        sub = subscriber_factory(broker.port, ["audiocap/late/events"])
        # The subscriber may have connected after some were delivered: check the order of what it got
        # and that the sink had everything acknowledged.
        assert sink.drain(15), sink.stats()
        assert sink.stats().dropped == 0
        got = [(e["event_id"], e["type"]) for e in sub.events()]
        want = [(e.event_id, e.type) for e in events]
        assert got == want[len(want) - len(got):]
    finally:
        sink.close()
        broker.stop()


def test_full_queue_refuses_whole_captions_and_keeps_states_true(tmp_path, subscriber_factory, caplog):
    """Three classes start, a flood of short captions overflows the queue, then the three end.

    Dropping the newest messages (as paho's own bound does) would drop the
    three ends and OFF states, leaving three classes ON in the retained state.
    """
    broker = dhelpers.Mosquitto(tmp_path)
    sink = MqttSink(_cfg(broker.port, queue_size=10), _ctx("small"))
    sink.start()
    t0 = 1_800_000_000.0
    opened = [CaptionEvent(f"long{i}", "start", c, f"[{c}]", 0.9, t0, None, time.time())
              for i, c in enumerate(CLASSES[:3])]
    flood = _events(10, t0 + 1)
    closed = [CaptionEvent(e.event_id, "end", e.label, e.caption, 0.9, t0, t0 + 20, time.time()) for e in opened]
    try:
        for ev in opened + flood + closed:
            sink.on_event(ev)
        st = sink.stats()
        assert st.dropped > 0 and any("queue full" in r.getMessage() for r in caplog.records)
        broker.start()
        assert sink.drain(15), sink.stats()
    finally:
        sink.close()
    late = subscriber_factory(broker.port, ["audiocap/small/state/+"])
    assert late.wait_for(lambda m: len(m) >= 4, 5)
    retained = {t.rsplit("/", 1)[1]: p for t, p, r in late.messages if r}
    assert retained == {c: b"OFF" for c in CLASSES}, retained
    broker.stop()


def test_full_queue_drops_are_whole_captions(tmp_path):
    port = dhelpers.free_port()
    sink = MqttSink(_cfg(port, queue_size=10), _ctx("small2"))
    sink.start()
    try:
        for ev in _events(10):
            sink.on_event(ev)
        st = sink.stats()
        # A start is 3 messages (event, state, onset), an end 2: e0 and e1 fit (10),
        # e2..e9 are refused whole (4 caption messages each).
        assert st.queued == 10 and st.dropped == 32
        held = [(m.topic.rsplit("/", 1)[1], m.payload) for m in sink._held]
        assert held[-2:] == [("events", held[-2][1]), ("Animal", "OFF")]
    finally:
        sink.close()


def test_refused_connection_is_not_connected(tmp_path, caplog):
    workdir = tmp_path / "auth"
    workdir.mkdir()
    pwfile = workdir / "passwd"
    pwfile.write_text("")
    import subprocess

    subprocess.run(["mosquitto_passwd", "-b", str(pwfile), "cap", "right-password"], check=True)
    broker = dhelpers.Mosquitto(workdir, extra_conf=f"password_file {pwfile}\n")
    broker.conf.write_text(broker.conf.read_text().replace("allow_anonymous true", "allow_anonymous false"))
    broker.start()
    try:
        bad = MqttSink(_cfg(broker.port, username="cap", password="wrong"), _ctx("bad"))
        bad.start()
        time.sleep(2)
        assert not bad.connected
        assert any("refused" in r.getMessage() for r in caplog.records)
        bad.close()
        good = MqttSink(_cfg(broker.port, username="cap", password="right-password"), _ctx("good"))
        good.start()
        good.on_event(_events(1)[0])
        assert good.drain(5) and good.connected
        good.close()
    finally:
        broker.stop()


def test_undelivered_captions_are_journaled_and_resent_first(tmp_path, subscriber_factory):
    broker = dhelpers.Mosquitto(tmp_path)
    spool = tmp_path / "state" / "mqtt-spool.jsonl"
    spool.parent.mkdir()
    first = MqttSink(_cfg(broker.port, spool_file=str(spool)), _ctx("spool"))
    first.start()  # the broker is down for this whole run
    events = _events(3)
    for ev in events:
        first.on_event(ev)
    # Journaled as they were made, not at exit (3 starts x 3 messages, 3 ends x 2).
    assert len(spool.read_text().splitlines()) == 15
    assert not first.drain(0.2)
    first.close()
    lines = spool.read_text().splitlines()
    assert len(lines) == 15 and json.loads(lines[0])["topic"] == "audiocap/spool/events"
    broker.start()
    try:
        sub = subscriber_factory(broker.port, ["audiocap/spool/events"])
        second = MqttSink(_cfg(broker.port, spool_file=str(spool)), _ctx("spool"))
        second.start()
        new = CaptionEvent("new", "start", "Music", "[Music]", 0.9, 1.9e9, None, time.time())
        second.on_event(new)
        assert second.drain(10)
        assert sub.wait_for(lambda m: len(m) >= 7, 10)
        got = [(e["event_id"], e["type"]) for e in sub.events()]
        # The new caption is still open: its start is kept in the journal until it ends.
        assert got == [(e.event_id, e.type) for e in events] + [("new", "start")]
        second.on_event(CaptionEvent("new", "end", "Music", "[Music]", 0.9, 1.9e9, 1.9e9 + 1, time.time()))
        assert second.drain(10)
        second.close()
        assert not spool.exists()  # everything delivered, nothing open: nothing to keep
    finally:
        broker.stop()
