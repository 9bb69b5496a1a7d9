"""Fixtures for the daemon tests: a real mosquitto, a real PulseAudio, the shipped classifier.

Nothing is mocked: the broker is the Debian ``mosquitto`` on a free loopback
port, the microphone is a PulseAudio null sink's monitor reached through
PortAudio's ALSA ``pulse`` plugin, the models are the real loaders.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dhelpers import Mosquitto, Subscriber  # noqa: E402

@pytest.fixture
def mosquitto(tmp_path):
    """A running broker (stopped after the test)."""
    workdir = tmp_path / "broker"
    workdir.mkdir()
    broker = Mosquitto(workdir)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def subscriber_factory():
    made: list[Subscriber] = []

    def make(port: int, topics: list[str], **kw) -> Subscriber:
        s = Subscriber(port, topics, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


# --- PulseAudio -----------------------------------------------------------------------

@pytest.fixture(scope="session")
def pulse(tmp_path_factory):
    """A private PulseAudio with a 16 kHz mono null sink ``virt``; yields the client env."""
    for tool in ("pulseaudio", "paplay", "pactl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/setup installs pulseaudio and pulseaudio-utils)")
    run = tmp_path_factory.mktemp("pulse")
    sock = run / "native"
    env = dict(os.environ)
    env.update({
        "XDG_RUNTIME_DIR": str(run),
        "HOME": str(run),
        "PULSE_RUNTIME_PATH": str(run),
        "PULSE_STATE_PATH": str(run / "state"),
    })
    proc = subprocess.Popen(
        ["pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--disallow-exit", "--system=false",
         "--use-pid-file=false", "-L", f"module-native-protocol-unix auth-anonymous=1 socket={sock}",
         "-L", "module-null-sink sink_name=virt rate=16000 channels=1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    client = dict(os.environ)
    client.update({"PULSE_SERVER": f"unix:{sock}", "PULSE_SOURCE": "virt.monitor", "PULSE_SINK": "virt"})
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"pulseaudio exited: {proc.stderr.read().decode()[-2000:]}")
        if subprocess.run(["pactl", "info"], env=client, capture_output=True).returncode == 0:
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("pulseaudio did not come up within 15 s")
    yield client
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def classifier_dir():
    """The shipped classifier bundle (skips until it has landed)."""
    try:
        from pipeline.classifier import default_bundle_path
    except ImportError:
        pytest.skip("pipeline.classifier has not landed yet")
    try:
        return default_bundle_path()
    except Exception as exc:
        pytest.skip(f"no bundled classifier yet: {exc}")


@pytest.fixture(scope="session")
def classifier(classifier_dir):
    from pipeline.classifier import load_classifier

    return load_classifier(classifier_dir, runtime="keras")


