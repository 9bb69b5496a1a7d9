"""Configuration: TOML -> frozen dataclasses, one-line errors naming key and file, exit 78."""

from __future__ import annotations

import dataclasses

import pytest

import dhelpers
from daemon.config import ConfigError, load_config, parse_sink, parse_source, to_toml


def _write(tmp_path, text: str):
    p = tmp_path / "audiocap.toml"
    p.write_text(text)
    return p


def _replay_dir(tmp_path):
    """A replay source --check-config accepts (a folder with a *.tfrecord): it needs no VGGish or PCA."""
    d = tmp_path / "replay"
    d.mkdir(exist_ok=True)
    (d / "clip.tfrecord").write_bytes(b"")
    return f"replay:{d}"


def test_defaults_work_and_are_frozen(tmp_path):
    cfg = load_config(_write(tmp_path, ""))
    assert cfg.daemon.source == "mic" and cfg.daemon.sinks == ("mqtt",)
    assert cfg.mqtt.effective_port == 1883
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.daemon.source = "file:x.wav"  # type: ignore[misc]


def test_file_then_flags(tmp_path):
    p = _write(tmp_path, """
[daemon]
node = "kitchen"
source = "file:a.wav"
[mqtt]
host = "broker.lan"
port = 1884
tls = true
[events]
thresholds = { Music = 0.7 }
captions = { Animal = "[Dog barking]" }
""")
    cfg = load_config(p, {("mqtt", "port"): (1999, "--mqtt-port"), ("daemon", "sinks"): (["stdout"], "--sink")})
    assert cfg.daemon.node == "kitchen" and cfg.mqtt.host == "broker.lan"
    assert cfg.mqtt.port == 1999 and cfg.daemon.sinks == ("stdout",)
    assert cfg.events.thresholds == {"Music": 0.7}
    assert cfg.events.captions == {"Animal": "[Dog barking]"}
    assert parse_source(cfg.daemon.source).arg == "a.wav"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[mqtt]\nprot = 1883\n", "[mqtt] prot: unknown key"),
        ("[mqtt]\nport = \"1883\"\n", "[mqtt] port: expected an integer"),
        ("[mqtt]\nport = 70000\n", "[mqtt] port: 70000 is out of range"),
        ("[daemon]\npace = \"slow\"\n", "[daemon] pace: expected one of realtime, fast"),
        ("[daemon]\nexit_at_end = 1\n", "[daemon] exit_at_end: expected true or false"),
        ("[events]\nthresholds = { Musik = 0.5 }\n", "[events] thresholds.Musik: unknown class"),
        ("[events]\nthresholds = { Music = 1.5 }\n", "[events] thresholds.Music: 1.5 is out of range"),
        ("[speakers]\nx = 1\n", "unknown table [speakers]"),
        ("[daemon]\nsource = \"usb\"\n", "[daemon] source: expected mic"),
        ("[daemon]\nsinks = [\"mqtt\", \"email\"]\n", "[daemon] sinks: expected mqtt"),
        ("[mqtt]\npassword = \"hunter2\"\n", "[mqtt] password: unknown key (set the password with"),
        ("[mqtt]\nca_file = \"/nonexistent/ca.pem\"\n", "[mqtt] ca_file: no such file"),
        ("[daemon\n", "invalid TOML"),
        # Issue 10: configurations that passed and then could not work.
        ("[mqtt]\nhost = \"\"\n", "[mqtt] host is empty"),
        ("[mqtt]\nusername = \"ca\\u0000p\"\n", "[mqtt] username: 'ca\\x00p' holds a NUL character"),
        ("[mqtt]\nusername = \"ca\\np\"\n", "[mqtt] username: 'ca\\np' holds a control character"),
        ("[events]\noff_ratio = 0\n", "[events] off_ratio = 0 would never end a caption"),
        ("[daemon]\nsinks = \"stdout\"\n", "[daemon] sinks: expected a list of strings, got a string"),
        ("[mic]\nsample_rate = 44101\n", "[mic] sample_rate: cannot stream-resample 44101 Hz"),
    ],
)
def test_bad_config_is_one_line_naming_key_and_file(tmp_path, text, fragment):
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    msg = str(info.value)
    assert fragment in msg
    assert str(p) in msg
    assert "\n" not in msg
    assert "hunter2" not in msg


def test_ca_file_that_is_not_a_certificate(tmp_path):
    notca = tmp_path / "ca.pem"
    notca.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    p = _write(tmp_path, f"[mqtt]\ntls = true\nca_file = \"{notca}\"\n")
    with pytest.raises(ConfigError, match=r"\[mqtt\] ca_file: .* is not a PEM CA certificate") as info:
        load_config(p)
    assert str(p) in str(info.value) and "\n" not in str(info.value)


def test_odd_rates_that_resample_are_accepted(tmp_path):
    assert load_config(_write(tmp_path, "[mic]\nsample_rate = 44100\n")).mic.sample_rate == 44100
    assert load_config(_write(tmp_path, "[mic]\nsample_rate = 11025\n")).mic.sample_rate == 11025


def test_check_config_refuses_an_off_threshold_above_the_models_on(tmp_path, classifier_dir):
    p = _write(tmp_path, "[events]\noff_thresholds = { Music = 0.99 }\n")
    r = dhelpers.run_daemon("--config", str(p), "--check-config", "--classifier", str(classifier_dir),
                            "--runtime", "litert", "--source", _replay_dir(tmp_path), timeout=120)
    lines = dhelpers.error_lines(r.stderr)
    assert r.returncode == 78, r.stderr[-2000:]
    assert len(lines) == 1 and str(p) in lines[0] and "Music" in lines[0] and "Traceback" not in r.stderr


def test_bad_flag_names_the_flag(tmp_path):
    with pytest.raises(ConfigError, match=r"^--mqtt-port: \[mqtt\] port: 0?-1 is out of range"):
        load_config(_write(tmp_path, ""), {("mqtt", "port"): (-1, "--mqtt-port")})


def test_password_from_env_or_file_is_masked(tmp_path, monkeypatch):
    pw = tmp_path / "pw"
    pw.write_text("s3cret-from-file\n")
    p = _write(tmp_path, f"[mqtt]\nusername = \"cap\"\npassword_file = \"{pw}\"\n")
    monkeypatch.delenv("AUDIOCAP_MQTT_PASSWORD", raising=False)
    cfg = load_config(p)
    assert cfg.mqtt.password == "s3cret-from-file"
    assert "s3cret" not in repr(cfg) and "s3cret" not in to_toml(cfg)
    monkeypatch.setenv("AUDIOCAP_MQTT_PASSWORD", "env-wins")
    assert load_config(p).mqtt.password == "env-wins"


def test_sink_specs():
    assert parse_sink("vtt:out.vtt") == ("vtt", "out.vtt")
    assert parse_sink("stdout") == ("stdout", "")
    with pytest.raises(ValueError):
        parse_sink("vtt")


def test_cli_exit_78_and_check_config(tmp_path):
    bad = _write(tmp_path, "[mqtt]\nport = \"x\"\n")
    r = dhelpers.run_daemon("--config", str(bad), "--check-config", timeout=60)
    assert r.returncode == 78, r.stderr
    lines = dhelpers.error_lines(r.stderr)
    assert len(lines) == 1 and str(bad) in lines[0] and "[mqtt] port" in lines[0]
    pw = tmp_path / "pw"
    pw.write_text("topsecret\n")
    good = tmp_path / "good.toml"
    good.write_text(f"[mqtt]\nusername = \"u\"\npassword_file = \"{pw}\"\n")
    r = dhelpers.run_daemon("--config", str(good), "--check-config", "--mqtt-port", "1999",
                            "--source", _replay_dir(tmp_path), timeout=60)
    assert r.returncode == 0, r.stderr
    assert "port = 1999" in r.stdout and "(set, masked)" in r.stdout
    assert "topsecret" not in r.stdout + r.stderr
    r = dhelpers.run_daemon("--config", str(tmp_path / "missing.toml"), "--check-config", timeout=60)
    assert r.returncode == 78 and "missing.toml" in dhelpers.error_lines(r.stderr)[0]


def test_per_class_keys_follow_the_classes_of_the_chosen_bundle(tmp_path):
    # The home bundle has classes the default does not; each config is checked against its own bundle.
    p = _write(tmp_path, '[model]\nclassifier = "audiocap-home"\n[events]\nthresholds = { "Doorbell or knock" = 0.3 }\n')
    assert load_config(p).events.thresholds == {"Doorbell or knock": 0.3}
    p = _write(tmp_path, '[events]\ncaptions = { Alarm = "[Fire alarm]" }\n')
    with pytest.raises(ConfigError) as info:
        load_config(p)
    from pipeline.classifier import default_bundle_path, read_metadata

    version = read_metadata(default_bundle_path())["version"]  # whichever version is shipped
    assert f"[events] captions.Alarm: unknown class (the classifier audiocap-4class@{version} has Speech, Animal, " \
           "Music, Vehicle)" in str(info.value) and str(p) in str(info.value)


@pytest.mark.parametrize("origin", ["file", "flag"])
def test_a_classifier_name_typo_names_where_it_came_from(tmp_path, origin):
    if origin == "file":
        p = _write(tmp_path, '[model]\nclassifier = "audiocap-hom"\n')
        with pytest.raises(ConfigError) as info:
            load_config(p)
        where = str(p)
    else:
        with pytest.raises(ConfigError) as info:
            load_config(_write(tmp_path, ""), {("model", "classifier"): ("audiocap-hom", "--classifier")})
        where = "--classifier"
    text = str(info.value)
    assert text.startswith(f"{where}: [model] classifier: 'audiocap-hom'") and "did you mean 'audiocap-home'" in text
