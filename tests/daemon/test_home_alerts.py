"""The home-alerts bundle end to end: real `bal_train` alarm clips replayed through `audiocapd
--classifier audiocap-home` produce urgent alarm captions on MQTT, and only the urgent classes are urgent."""

from __future__ import annotations

import json

import numpy as np
import pytest

import dhelpers


@pytest.fixture(scope="module")
def alarm_stream(bal_train_dir, tmp_path_factory):
    """A stream of alarm scenes between scenes with none of the eight classes, from the report half
    of the grouped validation split (the bundle was neither trained nor calibrated on it)."""
    pytest.importorskip("tensorflow")
    from pipeline.classifier import load_classifier
    from pipeline.labels import ClassMap
    from train import scenes, timeline

    clf = load_classifier("audiocap-home")
    clips, y = timeline.timeline_clips(bal_train_dir, ClassMap.from_metadata(clf.metadata["classes"]), half="report")
    kinds = scenes.clip_kinds(y)
    alarm = clf.classes.index("Alarm")
    chosen = np.r_[np.flatnonzero(kinds == alarm)[:8], np.flatnonzero(kinds == scenes.NONE)[:8]]
    sub = clips.subset(chosen)
    stream = timeline.make_stream(sub, y[chosen], seed=0)
    folder = tmp_path_factory.mktemp("alarms")
    timeline.write_stream_tfrecords(stream, sub, folder)
    truth = stream.labels[:, alarm] > 0
    return clf, folder, truth


def test_replayed_alarm_clips_give_urgent_alarm_captions_on_mqtt(alarm_stream, mosquitto, subscriber_factory,
                                                                  tmp_path):
    clf, folder, truth = alarm_stream
    assert truth.sum() >= 40, "the stream must hold several alarm scenes for this test to mean anything"
    sub = subscriber_factory(mosquitto.port, ["audiocap/#"])
    vtt = tmp_path / "alarms.vtt"
    proc = dhelpers.run_daemon("--classifier", "audiocap-home", "--source", f"replay:{folder}", "--sink", "mqtt",
                               "--sink", f"vtt:{vtt}", "--mqtt-port", str(mosquitto.port), "--node", "hall",
                               "--pace", "fast", "--exit-at-end", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sub.wait_for(lambda m: any(t.endswith("/status") and p == b"offline" for t, p, _ in m), 10)
    events = sub.events()
    alarms = [e for e in events if e["label"] == "Alarm"]
    assert alarms and all(e["urgent"] is True for e in alarms), events
    assert all(e["urgent"] is (e["label"] in ("Alarm", "Doorbell or knock", "Baby crying")) for e in events)
    assert all(e["model"] == f"{clf.name}@{clf.version}" for e in events)
    onsets = [json.loads(p) for p in sub.payloads("/onsets")]
    assert {o["event_id"] for o in onsets if o["event_type"] == "Alarm"} == \
        {e["event_id"] for e in alarms if e["type"] == "start"}
    # The alarm captions are alarms: each starts on an alarm scene, by the subtitles' clock. (Alarm
    # takes the 10-s window model's score, so a caption may outlast its scene by a few seconds:
    # the display keeps an alert up until someone acknowledges it anyway.)
    from train import timeline

    caps = [c for c in timeline.read_vtt(vtt, clf.classes, clf.captions) if clf.classes[c.cls] == "Alarm"]
    on_alarm = [bool(truth[int(np.floor(c.start)) : int(np.ceil(c.start)) + 1].any()) for c in caps]
    assert caps and np.mean(on_alarm) >= 0.75, on_alarm
    # Half of the alarm scenes raise an alert (the calibration keeps an urgent class within two false
    # alarms per hour of busy sound, at the cost of missing some alarms: docs/experiments.md).
    grid = timeline.captioned_grid(caps, len(truth), len(clf.classes))[:, clf.classes.index("Alarm")]
    runs = np.flatnonzero(np.diff(np.r_[0, truth.astype(int), 0]))
    scenes_hit = [grid[a:b].any() for a, b in zip(runs[::2], runs[1::2])]
    print("alarm captions starting on an alarm scene:", on_alarm, "scenes hit:", scenes_hit)
    assert np.mean(scenes_hit) >= 0.5, scenes_hit
