"""Home Assistant discovery for any class set, checked with Home Assistant's own schemas; urgent onsets on MQTT."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from daemon.config import MqttConfig
from daemon.sinks import SinkContext
from daemon.sinks.mqtt import MqttSink
from pipeline.classset import load_class_set
from pipeline.events import CaptionEvent

REPO = Path(__file__).resolve().parents[2]
CHECKER = Path(__file__).resolve().parent / "ha_schema_check.py"


def _ha_python() -> str:
    python = os.environ.get("AUDIOCAP_HA_PYTHON") or str(REPO / ".venv-homeassistant" / "bin" / "python")
    if not Path(python).exists():
        pytest.skip(f"Home Assistant is not installed at {python} (scripts/setup makes .venv-homeassistant)")
    return python


def _home_ctx(node: str) -> SinkContext:
    cs = load_class_set("home")
    return SinkContext(node=node, source="replay:x", model="audiocap-home@0.1", classes=cs.names,
                       captions={c.name: c.caption for c in cs.classes},
                       urgent=tuple(c.name for c in cs.classes if c.urgent))


def _retained_configs(port: int, subscriber_factory) -> dict[str, dict]:
    late = subscriber_factory(port, ["homeassistant/#"])
    assert late.wait_for(lambda m: len(m) >= 10, 10), late.messages
    time.sleep(0.3)
    return {t: json.loads(p) for t, p, retained in late.messages if retained and t.endswith("/config")}


def test_discovery_for_the_home_classes_passes_home_assistants_schemas(mosquitto, subscriber_factory):
    python = _ha_python()
    sink = MqttSink(MqttConfig(host="127.0.0.1", port=mosquitto.port), _home_ctx("hall"))
    sink.start()
    try:
        deadline = time.monotonic() + 10
        while not sink.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sink.connected and sink.drain(5)
        configs = _retained_configs(mosquitto.port, subscriber_factory)
    finally:
        sink.close()
    # 8 binary sensors, the event entity and the level sensor, retained.
    assert len(configs) == 10, sorted(configs)
    door = configs["homeassistant/binary_sensor/hall_doorbell_or_knock/config"]
    assert door["state_topic"] == "audiocap/hall/state/Doorbell_or_knock" and door["name"] == "Doorbell or knock"
    assert configs["homeassistant/binary_sensor/hall_speech/config"]["state_topic"] == "audiocap/hall/state/Speech"
    event = configs["homeassistant/event/hall_sounds/config"]
    assert event["event_types"] == list(load_class_set("home").names)
    assert event["state_topic"] == "audiocap/hall/onsets"
    level = configs["homeassistant/sensor/hall_level/config"]
    assert level["state_topic"] == "audiocap/hall/scores" and level["unit_of_measurement"] == "dBFS"
    proc = subprocess.run([python, str(CHECKER)], input=json.dumps(configs), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    bad = {t: r for t, r in report["results"].items() if not r.get("ok")}
    assert not bad, (report["homeassistant"], bad)
    # The checker can fail: a misspelt key is refused by the same schemas.
    topic = "homeassistant/event/hall_sounds/config"
    wrong = {topic: dict(configs[topic], event_type=["Alarm"])}
    proc = subprocess.run([python, str(CHECKER)], input=json.dumps(wrong), capture_output=True, text=True,
                          timeout=120)
    assert "extra keys not allowed" in json.loads(proc.stdout)["results"][topic]["error"]


def test_an_urgent_caption_reaches_the_event_entity_and_the_caption_payload(mosquitto, subscriber_factory):
    sub = subscriber_factory(mosquitto.port, ["audiocap/hall/#"])
    sink = MqttSink(MqttConfig(host="127.0.0.1", port=mosquitto.port, discovery=False), _home_ctx("hall"))
    sink.start()
    t0 = 1_800_000_000.0
    try:
        for ev in (CaptionEvent("a1", "start", "Alarm", "[Alarm]", 0.8, t0, None, time.time(), True, -12.0),
                   CaptionEvent("s1", "start", "Speech", "[Speech]", 0.7, t0, None, time.time(), False, -30.0),
                   CaptionEvent("a1", "end", "Alarm", "[Alarm]", 0.9, t0, t0 + 5, time.time(), True, -9.5)):
            sink.on_event(ev)
        assert sink.drain(5)
        assert sub.wait_for(lambda m: len([x for x in m if x[0].endswith("/onsets")]) == 2, 5)
    finally:
        sink.close()
    onsets = [json.loads(p) for p in sub.payloads("/onsets")]
    assert [(o["event_type"], o["urgent"], o["level_dbfs"]) for o in onsets] == [("Alarm", True, -12.0),
                                                                               ("Speech", False, -30.0)]
    events = sub.events()
    assert [(e["label"], e["type"], e["urgent"], e["level_dbfs"]) for e in events] == [
        ("Alarm", "start", True, -12.0), ("Speech", "start", False, -30.0), ("Alarm", "end", True, -9.5)]
    assert sub.payloads("/state/Alarm")[-1] == b"OFF"
