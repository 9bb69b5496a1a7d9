"""The service end to end: real AudioSet tfrecords replayed through the real classifier to a real broker."""

from __future__ import annotations

import io
import json
import signal
import socket
import subprocess
import threading
import time


import dhelpers
from daemon.chain import CaptionChain
from daemon.config import load_config
from daemon.sinks.mqtt import MqttSink
from daemon.service import Service
from daemon.sinks import SinkContext, StdoutSink
from daemon.sources import ReplaySource
from pipeline.events import EventTracker


def _notify_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    got: list[str] = []
    stop = threading.Event()

    def read():
        while not stop.is_set():
            try:
                got.append(sock.recv(4096).decode())
            except socket.timeout:
                continue
            except OSError:
                return

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return path, got, lambda: (stop.set(), t.join(2), sock.close())


def test_replay_to_mqtt_sigterm_and_notify(bal_train_dir, classifier_dir, mosquitto, subscriber_factory, tmp_path):
    sub = subscriber_factory(mosquitto.port, ["audiocap/e2e/#"])
    conf = tmp_path / "audiocap.toml"
    conf.write_text("[daemon]\nmetrics_interval_s = 2\n[events]\nmin_duration_s = 0.9\n")
    notify_path, notes, close_notify = _notify_socket(tmp_path)
    env = dhelpers.daemon_env({"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "1000000"})
    proc = subprocess.Popen(
        dhelpers.daemon_cmd("--config", str(conf), "--source", f"replay:{bal_train_dir}", "--sink", "mqtt",
                            "--mqtt-host", "127.0.0.1", "--mqtt-port", str(mosquitto.port), "--node", "e2e",
                            "--classifier", str(classifier_dir), "--runtime", "tensorflow"),
        cwd=dhelpers.REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert sub.wait_for(lambda m: any(t.endswith("/events") for t, _, _ in m), 60), proc.stderr
        assert sub.wait_for(lambda m: any(t.endswith("/metrics") for t, _, _ in m), 10)
        time.sleep(1.0)
        took = dhelpers.stop_process(proc, signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
        close_notify()
    stderr = proc.stderr.read()
    assert proc.returncode == 0, stderr
    assert took <= 2.0, f"SIGTERM took {took:.2f} s"
    assert sub.wait_for(lambda m: sub.payloads("/status")[-1:] == [b"offline"], 5)
    statuses = sub.payloads("/status")
    assert statuses[0] == b"online" and statuses[-1] == b"offline"
    evs = sub.events()
    # Every event that started was ended (open ones at SIGTERM), ids paired, times in order.
    starts = {e["event_id"]: e for e in evs if e["type"] == "start"}
    ends = {e["event_id"]: e for e in evs if e["type"] == "end"}
    assert starts and set(starts) == set(ends)
    for eid, e in ends.items():
        assert e["start"] == starts[eid]["start"] and e["end"] >= e["start"]
        assert e["source"] == f"replay:{bal_train_dir}" and e["model"].startswith("audiocap-4class@")
    scores = [json.loads(p) for p in sub.payloads("/scores")]
    assert len(scores) >= 3 and set(scores[0]["scores"]) == {"Speech", "Animal", "Music", "Vehicle"}
    # Paced replay: one window every 0.96 s of audio clock.
    from datetime import datetime

    ts = [datetime.fromisoformat(s["t"].replace("Z", "+00:00")).timestamp() for s in scores]
    assert all(abs((b - a) - 0.96) < 0.002 for a, b in zip(ts, ts[1:]))
    metrics = json.loads(sub.payloads("/metrics")[0])
    for key in ("uptime_s", "blocks", "overflows", "queue_depth", "proc_ms_per_s_p50", "proc_ms_per_s_p95",
                "dropped_captions"):
        assert key in metrics
    assert any(n.startswith("READY=1") for n in notes), notes
    assert any("WATCHDOG=1" in n for n in notes), notes
    assert any(n.startswith("STATUS=") or "\nSTATUS=" in n for n in notes), notes


def test_sigkill_leaves_the_last_will(bal_train_dir, classifier_dir, mosquitto, subscriber_factory):
    """On the LiteRT runtime replay needs no TensorFlow at all: this start is quick."""
    sub = subscriber_factory(mosquitto.port, ["audiocap/killed/status"])
    proc = subprocess.Popen(
        dhelpers.daemon_cmd("--source", f"replay:{bal_train_dir}", "--sink", "mqtt", "--mqtt-host", "127.0.0.1",
                            "--mqtt-port", str(mosquitto.port), "--node", "killed",
                            "--classifier", str(classifier_dir), "--runtime", "litert"),
        cwd=dhelpers.REPO, env=dhelpers.daemon_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        assert sub.wait_for(lambda m: sub.payloads("status") == [b"online"], 30)
        proc.kill()
        proc.wait(10)
        assert sub.wait_for(lambda m: sub.payloads("status")[-1:] == [b"offline"], 10)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_broker_outage_mid_stream_delivers_everything_in_order(
    bal_train_dir, classifier_dir, tmp_path, subscriber_factory
):
    from pipeline.classifier import load_classifier

    workdir = tmp_path / "broker"
    workdir.mkdir()
    broker = dhelpers.Mosquitto(workdir)
    broker.start()
    # A persistent subscriber: the broker keeps its session (and queues for it) across the restart.
    sub = subscriber_factory(broker.port, ["audiocap/outage/events"], client_id="outage-watcher", persistent=True)
    conf = tmp_path / "audiocap.toml"
    conf.write_text(f"[daemon]\nnode = \"outage\"\nexit_at_end = true\ndrain_timeout_s = 30\n"
                    f"[mqtt]\nhost = \"127.0.0.1\"\nport = {broker.port}\nreconnect_min_s = 1\nreconnect_max_s = 2\n"
                    "[events]\nmin_duration_s = 0.9\nhold_s = 0.9\n")
    config = load_config(conf)
    clf = load_classifier(classifier_dir, runtime="litert")
    tracker = EventTracker(clf.classes, clf.thresholds, {c: 0.8 * clf.thresholds[c] for c in clf.classes},
                           min_duration=0.9, hold=0.9)
    # 12 embeddings per second of wall clock: ~25 s of run, the broker is away for 10 of them.
    source = ReplaySource(str(bal_train_dir), speed=12.0, limit_clips=30)
    source.open()
    ctx = SinkContext("outage", source.name, f"{clf.name}@{clf.version}", clf.classes, tracker.caption_texts())
    truth = io.StringIO()
    mqtt_sink = MqttSink(config.mqtt, ctx)
    service = Service(config, source, CaptionChain(clf, tracker), [StdoutSink(ctx, truth), mqtt_sink],
                      handle_signals=False)
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(service.run()))
    runner.start()
    try:
        time.sleep(5)
        broker.stop()
        made_before = truth.getvalue().count("\n")
        time.sleep(10)
        made_during = truth.getvalue().count("\n") - made_before
        assert not mqtt_sink.connected
        broker.start()
        runner.join(90)
        assert not runner.is_alive() and result == [0]
    finally:
        service.request_stop()
        runner.join(10)
        broker.stop()
    want = [json.loads(line) for line in truth.getvalue().splitlines()]
    assert made_during >= 2, "the outage must span caption events for this test to mean anything"
    assert sub.wait_for(lambda m: len(m) >= len(want), 15)
    got = sub.events()
    # QoS 1 may repeat a message that was in flight when the broker went away: drop exact repeats.
    deduped = [e for i, e in enumerate(got) if e not in got[:i]]
    assert deduped == want
    assert mqtt_sink.stats().dropped == 0


def test_stream_break_ends_open_captions_where_the_audio_stopped(bal_train_dir, classifier):
    from daemon.sources import EmbeddingBlock, StreamBreak
    from pipeline.audioset import iter_clips, list_tfrecords
    from pipeline.events import CaptionEvent

    clip = next(iter_clips(list_tfrecords(bal_train_dir)[:1]))
    # Thresholds of zero: every class is on from the first windows.
    tracker = EventTracker(classifier.classes, {c: 0.0 for c in classifier.classes}, min_duration=0.0, hold=0.0)
    chain = CaptionChain(classifier, tracker)
    out = chain.feed(EmbeddingBlock(clip.embeddings, 1000.0, 0.0, 1))
    assert [o.type for o in out if isinstance(o, CaptionEvent)] == ["start"] * 4
    ends = [o for o in chain.feed(StreamBreak(5.0)) if isinstance(o, CaptionEvent)]
    assert [(e.type, e.end) for e in ends] == [("end", 1000.0 + clip.embeddings.shape[0] * 0.96)] * 4
    # The next block starts a new stream: a fresh window, new events.
    again = chain.feed(EmbeddingBlock(clip.embeddings[:2], 2000.0, 0.0, 2))
    assert [o.type for o in again if isinstance(o, CaptionEvent)] == ["start"] * 4
