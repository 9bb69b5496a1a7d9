"""The daemon end to end in the edge profile (no TensorFlow installed), on LiteRT.

Sources: replayed AudioSet tfrecords from ../shared, and a WAV file of
espeak-ng speech through the int8 VGGish; sinks: a real mosquitto and stdout.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

import helpers

sys.path.insert(0, str(helpers.REPO / "tests" / "daemon"))
from dhelpers import Mosquitto, Subscriber  # noqa: E402


@pytest.fixture()
def replay_dir(bal_train_dir, tmp_path) -> Path:
    """A small replay directory: links to 25 real tfrecords."""
    d = tmp_path / "replay"
    d.mkdir()
    for f in sorted(bal_train_dir.glob("*.tfrecord"))[100:125]:
        (d / f.name).symlink_to(f)
    return d


def _edge_daemon(edge_python, edge_env, cwd, *args, timeout=180):
    return subprocess.run([str(edge_python), "-m", "daemon", *args], capture_output=True, text=True,
                          env=edge_env, cwd=cwd, timeout=timeout)


def test_edge_daemon_replay_to_mqtt_without_tensorflow(edge_python, edge_env, replay_dir, tmp_path):
    broker = Mosquitto(tmp_path)
    broker.start()
    try:
        sub = Subscriber(broker.port, ["audiocap/#"])
        proc = _edge_daemon(edge_python, edge_env, tmp_path, "--source", f"replay:{replay_dir}", "--sink", "mqtt",
                            "--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker.port), "--node", "edge",
                            "--pace", "fast", "--exit-at-end", "--runtime", "litert")
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert sub.wait_for(lambda m: any(t == "audiocap/edge/status" and p == b"offline" for t, p, _ in m), 10)
        events = sub.events()
        assert events, "no caption events from 25 AudioSet clips"
        assert {e["type"] for e in events} == {"start", "end"}
        assert all(e["source"] == f"replay:{replay_dir}" and e["node"] == "edge" for e in events)
        assert len(sub.payloads("/scores")) >= 200  # 25 clips x ~10 windows
        status = sub.payloads("/status")
        assert status[0] == b"online" and status[-1] == b"offline"
        sub.close()
    finally:
        broker.stop()


def test_edge_daemon_captions_a_wav_on_int8_vggish(edge_python, edge_env, vggish_tflite, pca_path, tmp_path):
    wav = helpers.espeak_wav("Good morning. The next train to the airport leaves from platform two. " * 2,
                             tmp_path / "speech.wav", rate=44100)
    proc = _edge_daemon(edge_python, edge_env, tmp_path, "--source", f"file:{wav}", "--sink", "stdout",
                        "--sink", f"vtt:{tmp_path / 'speech.vtt'}", "--pace", "fast", "--exit-at-end",
                        "--runtime", "litert", "--vggish", str(vggish_tflite["int8"]), "--pca", str(pca_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ready" in proc.stderr
    lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.strip()]
    seconds = soundfile.info(str(wav)).duration
    # Random VGGish weights: which captions appear is arbitrary, but every
    # line must be a well-formed event inside the recording, starts before ends.
    for e in lines:
        assert e["schema"] == 1 and e["type"] in ("start", "end") and e["label"] in ("Speech", "Animal", "Music", "Vehicle")
    starts = {e["event_id"] for e in lines if e["type"] == "start"}
    ends = {e["event_id"] for e in lines if e["type"] == "end"}
    assert starts == ends  # --exit-at-end closes every open caption
    assert (tmp_path / "speech.vtt").read_text().startswith("WEBVTT")
    assert seconds > 5


def test_edge_daemon_refuses_a_non_tflite_vggish_clearly(edge_python, edge_env, vggish_ckpt, pca_path, tmp_path):
    wav = tmp_path / "tone.wav"
    soundfile.write(wav, helpers.sine(440, 2.0, 16000), 16000)
    proc = _edge_daemon(edge_python, edge_env, tmp_path, "--source", f"file:{wav}", "--sink", "stdout",
                        "--runtime", "litert", "--vggish", str(vggish_ckpt), "--pca", str(pca_path), timeout=60)
    assert proc.returncode == 78
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("audiocapd: error:")]
    assert len(err) == 1 and ".tflite" in err[0] and "export-vggish" in err[0]
