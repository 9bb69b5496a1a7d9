"""What the history tests share: the service as a subprocess, captions to publish, MQTT 5 queries."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import helpers

sys.path.insert(0, str(helpers.REPO / "tests" / "daemon"))
import dhelpers  # noqa: E402

REPO = helpers.REPO


def iso(t: float) -> str:
    """Epoch seconds -> the payloads' ISO form (UTC, milliseconds)."""
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def event(type_: str, event_id: str, label: str, t0: float, t1: float | None = None, node: str = "kitchen",
          urgent: bool = False, level: float | None = -20.0) -> dict[str, Any]:
    """A caption event as the daemon publishes it (pipeline.captions.event_payload's keys)."""
    return {"schema": 1, "event_id": event_id, "type": type_, "label": label, "caption": f"[{label}]",
            "score": 0.9, "start": iso(t0), "end": iso(t1) if type_ == "end" else None, "node": node,
            "source": "mic:default", "model": "audiocap-home@0.1", "urgent": urgent, "level_dbfs": level}


class History:
    """``python -m history`` (the code of the ``audiocap-history`` console script) on a test broker."""

    def __init__(self, workdir: Path, port: int, db: Path | None = None, *extra: str,
                 env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.port = port
        self.db = db or workdir / "history.sqlite3"
        self.extra = extra
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.logs: list[Path] = []

    def start(self, wait_online: bool = True) -> subprocess.Popen:
        log = self.workdir / f"history-{len(self.logs)}.log"
        self.logs.append(log)
        with open(log, "w") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "history", "--mqtt-host", "127.0.0.1", "--mqtt-port", str(self.port),
                 "--db", str(self.db), *self.extra],
                cwd=REPO, env=dhelpers.daemon_env(self.env), stdout=subprocess.DEVNULL, stderr=fh)
        if wait_online:  # subscribed, not only connected: captions sent before that are not kept for a new session
            self.wait_log("receiving captions", 20)
        return self.proc

    def log(self) -> str:
        return "".join(p.read_text() for p in self.logs if p.exists())

    def wait_log(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"audiocap-history exited ({self.proc.returncode}): {self.log()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in the log after {timeout} s: {self.log()[-2000:]}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> float:
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        return dhelpers.stop_process(self.proc, sig)

    def rows(self) -> list[dict[str, Any]]:
        """Every row of the database (read with sqlite3 itself, not with the service's code)."""
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        con.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in con.execute("SELECT * FROM captions ORDER BY start_ms, event_id")]
        finally:
            con.close()


class Publisher:
    """A paho client publishing caption events at QoS 1 (waiting for each PUBACK)."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
        self.client.reconnect_delay_set(1, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def send(self, topic: str, payload: Any, wait: bool = True) -> None:
        body = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
        info = self.client.publish(topic, body, qos=1)
        if wait:
            info.wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Requester:
    """An MQTT 5 client asking the history (response topic + correlation data), as the display does."""

    def __init__(self, port: int, prefix: str = "audiocap", username: str | None = None,
                 password: str | None = None) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.prefix = prefix
        self.response = f"{prefix}/_history/response/test-{uuid.uuid4().hex[:8]}"
        self.answers: dict[bytes, dict] = {}
        self.retained: dict[str, Any] = {}
        self.cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"req-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_message = self._on_message
        ready = threading.Event()
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe([(self.response, 1), (f"{prefix}/_history/#", 1)])
        if not ready.wait(10):
            raise RuntimeError("the requester did not subscribe")

    def _on_message(self, client, userdata, msg) -> None:
        with self.cond:
            corr = getattr(msg.properties, "CorrelationData", None)
            if msg.topic == self.response:
                self.answers[corr] = json.loads(msg.payload)
            else:
                try:
                    self.retained[msg.topic] = json.loads(msg.payload)
                except ValueError:
                    self.retained[msg.topic] = msg.payload.decode()
            self.cond.notify_all()

    def ask(self, query: dict | bytes, timeout: float = 10, response: str | None = None) -> dict | None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        corr = uuid.uuid4().bytes
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = response or self.response
        props.CorrelationData = corr
        body = query if isinstance(query, bytes) else json.dumps(query)
        self.client.publish(f"{self.prefix}/_history/request", body, qos=1, properties=props)
        with self.cond:
            self.cond.wait_for(lambda: corr in self.answers, timeout)
            return self.answers.get(corr)

    def wait_retained(self, topic: str, predicate, timeout: float = 10) -> Any:
        with self.cond:
            ok = self.cond.wait_for(lambda: topic in self.retained and predicate(self.retained[topic]), timeout)
            assert ok, f"{topic}: {self.retained.get(topic)!r}"
            return self.retained[topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_rows(history: History, predicate, timeout: float, what: str) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            rows = history.rows()
        except sqlite3.Error:
            rows = []
        if predicate(rows):
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {len(rows)} rows; log: {history.log()[-1500:]}")
        time.sleep(0.1)


def kill_all(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait(5)


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
