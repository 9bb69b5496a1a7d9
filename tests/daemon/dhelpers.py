"""Helpers for the daemon tests (imported by tests/daemon/conftest.py and the tests)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import helpers

REPO = helpers.REPO


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class Mosquitto:
    """A mosquitto broker on a free loopback port that tests can stop and restart.

    Persistence is on, so retained messages and the sessions of persistent
    subscribers (``clean_session=False``) survive a restart, like a production
    broker; ``max_queued_messages 0`` queues without limit for them.
    """

    def __init__(self, workdir: Path, extra_conf: str = "") -> None:
        self.workdir = workdir
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "max_queued_messages 0\n"
            "persistence true\n"
            f"persistence_location {workdir}/\n"
            "user root\n"
            f"log_dest file {self.log}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            + extra_conf
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        if shutil.which("mosquitto") is None:
            pytest.skip("mosquitto is not installed (scripts/setup installs it)")
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        try:
            wait_port(self.port)
        except RuntimeError:
            err = self.proc.stderr.read().decode() if self.proc.poll() is not None else ""
            raise RuntimeError(f"mosquitto did not start: {err}") from None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None



class Subscriber:
    """A paho client recording every message (topic, payload, retain) in arrival order."""

    def __init__(self, port: int, topics: list[str], client_id: str = "", persistent: bool = False) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[tuple[str, bytes, bool]] = []
        self.times: list[float] = []  # wall-clock arrival of each message
        self.cond = threading.Condition()
        self.topics = topics
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"test-{os.getpid()}-{id(self)}",
                                  clean_session=not persistent)
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise RuntimeError("subscriber did not subscribe")

    def _on_connect(self, client, userdata, flags, reason, properties):
        client.subscribe([(t, 1) for t in self.topics])

    def _on_message(self, client, userdata, msg):
        with self.cond:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))
            self.times.append(time.time())
            self.cond.notify_all()

    def wait_for(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True

    def payloads(self, suffix: str) -> list[bytes]:
        with self.cond:
            return [p for t, p, _ in self.messages if t.endswith(suffix)]

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(p) for p in self.payloads("/events")]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()



# --- Daemon subprocesses ---------------------------------------------------------------

def daemon_cmd(*args: str) -> list[str]:
    """``python -m daemon ARGS`` (the same code as the ``audiocapd`` console script)."""
    return [sys.executable, "-m", "daemon", *args]


def daemon_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.pop("NOTIFY_SOCKET", None)
    if extra:
        env.update(extra)
    return env


def run_daemon(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(daemon_cmd(*args), cwd=REPO, env=daemon_env(env), capture_output=True, text=True,
                          timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    """The daemon's own error lines (TensorFlow prints its own noise on stderr)."""
    return [ln for ln in stderr.splitlines() if ln.startswith("audiocapd: error:")]


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10) -> float:
    """Sends ``sig`` and returns the seconds until the process exited."""
    t0 = time.monotonic()
    proc.send_signal(sig)
    proc.wait(timeout=timeout)
    return time.monotonic() - t0



def speech_wav(path: Path, rate: int | None = None) -> Path:
    """A few sentences of espeak-ng speech."""
    text = ("Good evening. This is a test of the live captioning daemon. "
            "It listens to the microphone and tells the displays what it hears. ") * 2
    return helpers.espeak_wav(text, path, rate)


def tone_mix(seconds: float, rate: int) -> np.ndarray:
    """Deterministic test audio: tone, noise and a chirp in turn."""
    third = seconds / 3
    return np.concatenate([helpers.sine(440, third, rate), helpers.noise(third, rate, seed=3),
                           helpers.chirp(third, rate)]).astype(np.float32)
