"""``--check-config`` checks what start-up checks; ``--connect`` also reaches the broker.

And the errors of the README's live steps point to the way out: no broker on
the port, the display's websockets port given as the MQTT port, no sound card.
"""

from __future__ import annotations

import shutil

import pytest

import dhelpers
from daemon.config import MqttConfig
from daemon.sinks.mqtt import connect_hint

SAMPLE = dhelpers.REPO / "systemd" / "audiocap.toml"


def _sample_with_models_in(tmp_path, model_dir) -> "Path":  # noqa: F821
    """The shipped sample config, its /var/lib/audiocap model paths moved to ``model_dir``."""
    text = SAMPLE.read_text()
    assert text.count("/var/lib/audiocap/") >= 2
    conf = tmp_path / "audiocap.toml"
    conf.write_text(text.replace("/var/lib/audiocap/", f"{model_dir}/"))
    return conf


def test_the_sample_config_without_model_files_exits_78_naming_them(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    conf = _sample_with_models_in(tmp_path, models)
    r = dhelpers.run_daemon("--config", str(conf), "--check-config", timeout=120)
    assert r.returncode == 78, r.stderr[-2000:]
    lines = dhelpers.error_lines(r.stderr)
    assert len(lines) == 2, lines
    for key, name, asset in (("pca", "vggish_pca_params.npz", "pca"), ("vggish", "vggish_model.ckpt", "vggish")):
        line = next(ln for ln in lines if f"[model] {key}:" in ln)
        assert str(conf) in line and f"{models / name} does not exist" in line
        assert f"python -m pipeline.assets {asset} --out {models / name}" in line
    assert r.stdout == ""  # no effective configuration printed for a config that cannot start


def test_model_files_present_pass_and_a_changed_pinned_file_is_refused(tmp_path, pca_path):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(pca_path, models / "vggish_pca_params.npz")
    ckpt = models / "vggish_model.ckpt"
    from pipeline import params

    pinned_ckpt = getattr(params, "VGGISH_CHECKPOINT_SHA256", None)
    ckpt.write_bytes(b"not the checkpoint")  # presence only: VGGish is not loaded by --check-config
    conf = _sample_with_models_in(tmp_path, models)
    r = dhelpers.run_daemon("--config", str(conf), "--check-config", timeout=120)
    lines = dhelpers.error_lines(r.stderr)
    if pinned_ckpt:  # the release checkpoint is pinned: a file with other bytes is refused
        assert r.returncode == 78 and len(lines) == 1 and "[model] vggish" in lines[0], r.stderr[-2000:]
        assert "is not the VGGish release file" in lines[0]
    else:
        assert r.returncode == 0 and not lines, r.stderr[-2000:]
        assert f'vggish = "{ckpt}"' in r.stdout
    # One byte of the PCA file changed: it still loads, but it is not the pinned release file.
    data = bytearray((models / "vggish_pca_params.npz").read_bytes())
    data[len(data) // 2] ^= 0x01
    (models / "vggish_pca_params.npz").write_bytes(bytes(data))
    r = dhelpers.run_daemon("--config", str(conf), "--check-config", timeout=120)
    lines = [ln for ln in dhelpers.error_lines(r.stderr) if "[model] pca" in ln]
    assert r.returncode == 78 and len(lines) == 1, r.stderr[-2000:]
    assert "is not the VGGish release file" in lines[0] and "python -m pipeline.assets pca" in lines[0]


def _replay(tmp_path) -> str:
    d = tmp_path / "replay"
    d.mkdir()
    (d / "clip.tfrecord").write_bytes(b"")
    return f"replay:{d}"


def test_connect_reaches_the_broker_only_when_asked(tmp_path, mosquitto):
    dead = str(dhelpers.free_port())
    common = ("--source", _replay(tmp_path), "--sink", "mqtt", "--mqtt-host", "127.0.0.1", "--check-config")
    r = dhelpers.run_daemon(*common, "--mqtt-port", dead, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]  # not asked: the broker is not tried
    r = dhelpers.run_daemon(*common, "--mqtt-port", dead, "--connect", timeout=120)
    lines = dhelpers.error_lines(r.stderr)
    assert r.returncode == 69 and len(lines) == 1, r.stderr[-2000:]
    assert f"cannot reach MQTT broker 127.0.0.1:{dead} (Connection refused)" in lines[0]
    assert "mosquitto -c display/mosquitto-local.conf" in lines[0]
    r = dhelpers.run_daemon(*common, "--mqtt-port", str(mosquitto.port), "--connect", timeout=120)
    assert r.returncode == 0 and not dhelpers.error_lines(r.stderr), r.stderr[-2000:]


def test_a_websockets_port_given_as_the_mqtt_port_is_named(tmp_path):
    """The local display broker's own websockets listener (on a free port) as --mqtt-port."""
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed (scripts/setup installs it)")
    from test_broker_configs import _local_conf, _start

    ports = {"1884": dhelpers.free_port(), "9001": dhelpers.free_port()}
    proc = _start(_local_conf(ports), tmp_path, list(ports.values()))
    try:
        r = dhelpers.run_daemon("--source", _replay(tmp_path), "--sink", "mqtt", "--mqtt-host", "127.0.0.1",
                                "--mqtt-port", str(ports["9001"]), "--check-config", "--connect", timeout=120)
    finally:
        proc.terminate()
        proc.wait(10)
    lines = dhelpers.error_lines(r.stderr)
    assert r.returncode == 69 and len(lines) == 1, r.stderr[-2000:]
    assert "instead of answering MQTT's CONNECT" in lines[0] and "websockets port" in lines[0]
    assert "1884 for display/mosquitto-local.conf" in lines[0]


def test_hints_for_the_default_ports():
    refused = ConnectionRefusedError(111, "Connection refused")
    hint = connect_hint(MqttConfig(), refused)  # localhost:1883, nothing there
    assert "mosquitto -c display/mosquitto-local.conf" in hint and "--mqtt-port 1884" in hint
    assert "websockets port" in connect_hint(MqttConfig(port=9001), refused)
    assert connect_hint(MqttConfig(host="broker.lan"), refused) == ""


def test_no_sound_card_points_to_the_virtual_microphone(tmp_path):
    r = dhelpers.run_daemon("--list-devices", timeout=60)
    if "no audio input devices found" not in r.stdout:
        pytest.skip("this machine has an audio input device")
    assert "A virtual microphone (no sound card)" in r.stdout
    r = dhelpers.run_daemon("--source", "mic", "--sink", "stdout", timeout=60)
    lines = dhelpers.error_lines(r.stderr)
    assert r.returncode == 69 and len(lines) == 1, r.stderr[-2000:]
    assert "available: none" in lines[0] and "A virtual microphone (no sound card)" in lines[0]
    assert "A virtual microphone (no sound card)" in (dhelpers.REPO / "docs" / "daemon.md").read_text()


def test_on_litert_vggish_is_loaded_too(tmp_path, pca_path):
    """LiteRT loads VGGish without TensorFlow, so --check-config does: a file that is not
    a .tflite model is refused as start-up would refuse it."""
    wav = tmp_path / "a.wav"
    wav.write_bytes(b"RIFF")
    not_a_model = tmp_path / "vggish.tflite"
    not_a_model.write_bytes(b"not a model")
    for vggish, fragment in ((str(wav), "needs VGGish as a .tflite file"), (str(not_a_model), "vggish.tflite")):
        r = dhelpers.run_daemon("--source", "mic", "--sink", "stdout", "--runtime", "litert", "--vggish", vggish,
                                "--pca", str(pca_path), "--check-config", timeout=120)
        lines = dhelpers.error_lines(r.stderr)
        assert r.returncode == 78 and len(lines) == 1 and fragment in lines[0], r.stderr[-2000:]
