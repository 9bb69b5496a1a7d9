"""The daemon's configuration: TOML file -> environment (secrets) -> flags -> frozen dataclasses.

Parsed once at start-up and validated completely: an unknown key, a wrong type
or an out-of-range value is refused with one line naming the key and where it
came from (the file, or the flag), and the daemon exits with EX_CONFIG (78).

Secrets never come from the command line: the MQTT password is read from
``$AUDIOCAP_MQTT_PASSWORD``, else from ``[mqtt] password_file``, else from a
systemd credential ``$CREDENTIALS_DIRECTORY/mqtt_password``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from daemon.exitcodes import EX_CONFIG  # noqa: F401  (re-exported for callers)
from pipeline import params

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 needs the tomli backport
    import tomli as tomllib

DEFAULT_CONFIG_PATH = Path("/etc/audiocap/audiocap.toml")
"""Read when it exists and no ``--config`` is given."""
PASSWORD_ENV = "AUDIOCAP_MQTT_PASSWORD"
CREDENTIAL_NAME = "mqtt_password"
FROM_BUNDLE = -1.0
"""An ``[events]`` timing left at this takes the classifier bundle's calibrated value."""


class ConfigError(ValueError):
    """Invalid configuration; the message is one line naming the key and its origin."""


def _f(default: Any = dataclasses.MISSING, doc: str = "", *, lo: float | None = None,
       hi: float | None = None, choices: tuple[str, ...] | None = None, factory: Any = None,
       secret: bool = False) -> Any:
    meta = {"doc": doc, "lo": lo, "hi": hi, "choices": choices, "secret": secret, "table": factory is dict,
            "bundle_default": default is FROM_BUNDLE}
    if factory is not None:
        return field(default_factory=factory, metadata=meta, repr=not secret)
    return field(default=default, metadata=meta, repr=not secret)


def _default_node() -> str:
    return sanitize_node(socket.gethostname().split(".")[0] or "audiocap")


def _asset_dirs() -> list[Path]:
    dirs = [Path(os.environ["AUDIOCAP_DATA_DIR"])] if os.environ.get("AUDIOCAP_DATA_DIR") else []
    return dirs + [Path("/var/lib/audiocap"), Path.home() / ".cache" / "audiocap"]


def _default_pca() -> str:
    """The PCA file where ``python -m pipeline.assets pca`` puts it."""
    for d in _asset_dirs():
        if (d / "vggish_pca_params.npz").is_file():
            return str(d / "vggish_pca_params.npz")
    from pipeline.assets import default_path

    return str(default_path("pca"))


def _default_vggish() -> str:
    """The checkpoint ``python -m pipeline.assets vggish`` downloaded, else the TF-Hub handle."""
    for d in _asset_dirs():
        if (d / "vggish_model.ckpt").is_file():
            return str(d / "vggish_model.ckpt")
    return params.DEFAULT_VGGISH_HANDLE


def _default_edge_vggish() -> str | None:
    """The edge file ``scripts/setup`` builds beside the checkpoint, for the litert runtime."""
    from pipeline.assets import EDGE_VGGISH

    return next((str(d / EDGE_VGGISH) for d in _asset_dirs() if (d / EDGE_VGGISH).is_file()), None)


def sanitize_node(name: str) -> str:
    """Makes ``name`` safe as one MQTT topic level and HA object id."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name).strip("_") or "audiocap"


@dataclass(frozen=True)
class DaemonConfig:
    """``[daemon]``: what to listen to, where captions go, how the service behaves."""

    node: str = _f(factory=_default_node, doc="Node name in topics and payloads (default: host name).")
    source: str = _f("mic", "Audio source: mic, mic:DEVICE, file:PATH or replay:DIR.")
    sinks: tuple[str, ...] = _f(("mqtt",), "Where captions go: mqtt, stdout, vtt:PATH, srt:PATH.")
    pace: str = _f("realtime", "File/replay pace: realtime, or fast (as fast as the CPU allows).",
                   choices=("realtime", "fast"))
    exit_at_end: bool = _f(False, "Exit when a file or replay source ends (after delivering everything).")
    log_level: str = _f("info", "Logging level.", choices=("debug", "info", "warning", "error"))
    drain_timeout_s: float = _f(params.DRAIN_TIMEOUT_SECONDS,
                                "At the end of a run, how long to wait for the broker to take queued captions.",
                                lo=0, hi=3600)
    metrics_interval_s: float = _f(params.METRICS_INTERVAL_SECONDS, "Period of the metrics message.",
                                   lo=1, hi=86400)


@dataclass(frozen=True)
class MicConfig:
    """``[mic]``: the capture device."""

    device: str = _f("", "Input device name (substring) or index; empty = the system default.")
    channels: int = _f(0, "Channels to capture; 0 = the device's, at most 2 (they are averaged).", lo=0, hi=64)
    sample_rate: int = _f(0, "Capture rate in Hz; 0 = the device's native rate.", lo=0, hi=384000)
    block_s: float = _f(params.MIC_BLOCK_SECONDS, "Audio per callback, seconds.", lo=0.01, hi=1.0)
    queue_s: float = _f(params.MIC_QUEUE_SECONDS, "Audio buffered between callback and worker, seconds.",
                        lo=0.5, hi=600)
    retry_min_s: float = _f(params.MIC_RETRY_MIN_SECONDS, "First back-off after a device error.", lo=0.1, hi=600)
    retry_max_s: float = _f(params.MIC_RETRY_MAX_SECONDS, "Longest back-off after device errors.", lo=0.1, hi=3600)


@dataclass(frozen=True)
class ModelConfig:
    """``[model]``: the networks."""

    vggish: str = _f(factory=_default_vggish,
                     doc="VGGish weights: TF1 checkpoint, SavedModel dir, TF-Hub handle/URL, or .tflite (litert); "
                         "default: vggish_model.ckpt from `python -m pipeline.assets vggish`, else TF-Hub.")
    pca: str = _f(factory=_default_pca, doc="The VGGish release's vggish_pca_params.npz "
                                            "(default: where `python -m pipeline.assets pca` puts it).")
    classifier: str = _f("", "Classifier bundle directory; empty = the one shipped with audiocap.")
    runtime: str = _f("tensorflow", "Inference runtime (litert with no vggish given: vggish_int8.tflite from "
                                    "scripts/setup).", choices=("tensorflow", "litert"))
    num_threads: int = _f(1, "Inference threads.", lo=1, hi=64)


@dataclass(frozen=True)
class EventsConfig:
    """``[events]``: when a caption starts and ends. A value left out (or -1)
    comes from the classifier bundle's tracker, calibrated on the caption timeline."""

    scoring: str = _f("auto", "Caption from per-second scores (seconds), from the 10-s window score (window), "
                              "or as the bundle is calibrated (auto).", choices=("auto", "seconds", "window"))
    lookahead_s: float = _f(FROM_BUNDLE, "Per-second scoring: seconds of sound after a second before it is judged "
                                  "(the extra caption latency; rounded to 0.96 s steps); default: the bundle's, "
                                  "else 0.96.", lo=0, hi=(params.WINDOW_EMBEDDINGS - 1) * params.EMBEDDING_SECONDS)
    min_duration_s: float = _f(FROM_BUNDLE, "Seconds above threshold before a caption starts; default: the bundle's, "
                                     f"else {params.EVENT_MIN_DURATION_SECONDS:g}.", lo=0, hi=600)
    hold_s: float = _f(FROM_BUNDLE, "Seconds below the off threshold before a caption ends; default: the bundle's, "
                             f"else {params.EVENT_HOLD_SECONDS:g}.", lo=0, hi=600)
    off_ratio: float = _f(FROM_BUNDLE, "Off threshold = on threshold x this, unless set per class; default: the "
                                f"bundle's, else {params.EVENT_OFF_RATIO:g}.", lo=0, hi=1)
    thresholds: dict[str, float] = _f(factory=dict, doc="Per-class on thresholds; default: the model bundle's.",
                                      lo=0, hi=1)
    off_thresholds: dict[str, float] = _f(factory=dict, doc="Per-class off thresholds.", lo=0, hi=1)
    captions: dict[str, str] = _f(factory=dict, doc="Per-class caption text, e.g. Music = \"[Music]\".")


@dataclass(frozen=True)
class MqttConfig:
    """``[mqtt]``: the broker."""

    host: str = _f("localhost", "Broker host.")
    port: int = _f(0, "Broker port; 0 = 1883, or 8883 with TLS.", lo=0, hi=65535)
    prefix: str = _f("audiocap", "First topic level.")
    client_id: str = _f("", "MQTT client id; empty = audiocap-<node>-<random, per process>.")
    keepalive_s: int = _f(params.MQTT_KEEPALIVE_SECONDS, "Keep-alive, seconds.", lo=5, hi=3600)
    protocol: str = _f("5", "MQTT version: 5, or 3.1.1 for a broker without MQTT 5 (another daemon with the same "
                            "node name is then not detected).", choices=("5", "3.1.1"))
    username: str = _f("", "User name; the password comes from $AUDIOCAP_MQTT_PASSWORD or password_file.")
    password_file: str = _f("", "File holding the broker password (first line).")
    tls: bool = _f(False, "Connect with TLS.")
    ca_file: str = _f("", "CA certificate (PEM) for TLS; empty = the system's.")
    cert_file: str = _f("", "Client certificate (PEM) for TLS client authentication.")
    key_file: str = _f("", "Client key (PEM) for TLS client authentication.")
    tls_insecure: bool = _f(False, "Skip the broker host-name check (testing only).")
    queue_size: int = _f(params.MQTT_QUEUE_MESSAGES, "Captions/states kept while the broker is unreachable.",
                         lo=1, hi=10_000_000)
    reconnect_min_s: int = _f(params.MQTT_RECONNECT_MIN_SECONDS, "First reconnect delay.", lo=1, hi=3600)
    reconnect_max_s: int = _f(params.MQTT_RECONNECT_MAX_SECONDS, "Longest reconnect delay.", lo=1, hi=3600)
    spool_file: str = _f("", "Where captions undelivered at exit wait for the next start; "
                            "empty = $STATE_DIRECTORY/mqtt-spool.jsonl under systemd, else none.")
    scores: bool = _f(True, "Publish the per-window scores.")
    discovery: bool = _f(True, "Publish Home Assistant discovery.")
    discovery_prefix: str = _f("homeassistant", "Home Assistant discovery prefix.")
    password: str = _f("", "(from the environment or password_file only)", secret=True)

    @property
    def effective_port(self) -> int:
        """The port to connect to."""
        return self.port or (params.MQTT_TLS_PORT if self.tls else params.MQTT_PORT)


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    mic: MicConfig = field(default_factory=MicConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    path: str = ""
    """The file read, or empty when none was."""


SECTIONS: dict[str, type] = {
    "daemon": DaemonConfig,
    "mic": MicConfig,
    "model": ModelConfig,
    "events": EventsConfig,
    "mqtt": MqttConfig,
}


# --- Source and sink specifications --------------------------------------------

@dataclass(frozen=True)
class SourceSpec:
    """A parsed ``--source``: kind ``mic``/``file``/``replay`` and its argument."""

    kind: str
    arg: str

    def __str__(self) -> str:
        if self.kind == "mic":
            return f"mic:{self.arg or 'default'}"
        return f"{self.kind}:{self.arg}"


def parse_source(spec: str) -> SourceSpec:
    """``mic``, ``mic:DEVICE``, ``file:PATH``, ``replay:DIR`` -> :class:`SourceSpec`.

    Raises:
      ValueError: for anything else.
    """
    kind, _, arg = spec.partition(":")
    if kind == "mic":
        return SourceSpec("mic", "" if arg == "default" else arg)
    if kind in ("file", "replay") and arg:
        return SourceSpec(kind, arg)
    raise ValueError(f"expected mic, mic:DEVICE, file:PATH or replay:DIR, got {spec!r}")


def parse_sink(spec: str) -> tuple[str, str]:
    """``mqtt``, ``stdout``, ``vtt:PATH``, ``srt:PATH`` -> ``(kind, path)``.

    Raises:
      ValueError: for anything else.
    """
    kind, _, arg = spec.partition(":")
    if kind in ("mqtt", "stdout") and not arg:
        return kind, ""
    if kind in ("vtt", "srt") and arg:
        return kind, arg
    raise ValueError(f"expected mqtt, stdout, vtt:PATH or srt:PATH, got {spec!r}")


# --- Validation ------------------------------------------------------------------

def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def _check_range(value: float, meta: Mapping[str, Any], where: str) -> None:
    lo, hi = meta.get("lo"), meta.get("hi")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{where}: {value!r} is out of range ({lo} to {hi})")


def _coerce(default: Any, value: Any, meta: Mapping[str, Any], where: str) -> Any:
    """Checks ``value`` against the type of ``default`` and the field's limits."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_type_name(value)} ({value!r})")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {_type_name(value)} ({value!r})")
        _check_range(value, meta, where)
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {_type_name(value)} ({value!r})")
        if value != value:  # NaN
            raise ConfigError(f"{where}: expected a number, got nan")
        _check_range(value, meta, where)
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {_type_name(value)} ({value!r})")
        if "\x00" in value:  # C libraries (paho's socket layer, libsndfile...) would cut it there
            raise ConfigError(f"{where}: {value!r} holds a NUL character")
        choices = meta.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"{where}: expected one of {', '.join(choices)}, got {value!r}")
        return value
    if isinstance(default, tuple):
        if isinstance(value, str):  # `sinks = "stdout"`: say so rather than guess
            raise ConfigError(f"{where}: expected a list of strings, got a string ({value!r}); "
                              f"write [{_toml_value(value)}]")
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {_type_name(value)} ({value!r})")
        return tuple(value)
    raise TypeError(f"unsupported config field type at {where}")  # programming error


def _coerce_table(name: str, value: Any, meta: Mapping[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a table of class = value, got {_type_name(value)}")
    out: dict[str, Any] = {}
    for cls, v in value.items():
        if name == "captions":
            if not isinstance(v, str) or not v.strip():
                raise ConfigError(f"{where}.{cls}: expected a non-empty string, got {v!r}")
            out[cls] = v
        else:
            out[cls] = _coerce(0.0, v, meta, f"{where}.{cls}")
    return out


def _build_section(cls: type, raw: Mapping[str, Any], origins: Mapping[str, str], section: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"{origins.get(key, '?')}: [{section}] {key}"
        f = fields.get(key)
        if f is None or f.metadata.get("secret"):
            hint = " (set the password with $AUDIOCAP_MQTT_PASSWORD or password_file)" if key == "password" else ""
            known = ", ".join(n for n, ff in fields.items() if not ff.metadata.get("secret"))
            raise ConfigError(f"{where}: unknown key{hint}; known keys: {known}")
        if f.metadata.get("table"):
            kwargs[key] = _coerce_table(key, value, f.metadata, where)
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            kwargs[key] = _coerce(default, value, f.metadata, where)
    return cls(**kwargs)


def _read_password(mqtt: Mapping[str, Any], origin: str) -> str:
    env = os.environ.get(PASSWORD_ENV)
    if env:
        return env
    pw_file = mqtt.get("password_file") or ""
    if pw_file:
        try:
            return Path(pw_file).read_text(encoding="utf-8").splitlines()[0] if Path(pw_file).stat().st_size else ""
        except OSError as exc:
            raise ConfigError(
                f"{origin}: [mqtt] password_file: cannot read {pw_file}: {exc.strerror or exc}"
            ) from None
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir and (Path(cred_dir) / CREDENTIAL_NAME).is_file():
        return (Path(cred_dir) / CREDENTIAL_NAME).read_text(encoding="utf-8").splitlines()[0]
    return ""


def read_tables(
    path: str | os.PathLike | None,
    default_path: Path,
    sections: Iterable[str],
    overrides: Mapping[tuple[str, str], tuple[Any, str]] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, str]], str]:
    """Reads a TOML configuration and lays the flags over it (the daemon's and the history's).

    Args:
      path: the TOML file; ``None`` reads ``default_path`` if it exists.
      default_path: the file read without ``path``.
      sections: the known tables.
      overrides: ``{(section, key): (value, origin)}`` from command-line flags.

    Returns:
      ``(merged, origins, file_label)``: per table its raw values and where each
      came from (the file or the flag), and the file's name ("" for none).

    Raises:
      ConfigError: the file cannot be read, is not TOML, or has an unknown table.
    """
    raw: dict[str, Any] = {}
    file_label = ""
    if path is None and default_path.is_file():
        path = default_path
    if path is not None:
        file_label = os.fspath(path)
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"{file_label}: cannot read the configuration file: {exc.strerror or exc}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file_label}: invalid TOML: {exc}") from None
    names = list(sections)
    for section, value in raw.items():
        if section not in names:
            raise ConfigError(f"{file_label}: unknown table [{section}]; known tables: {', '.join(names)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{file_label}: {section} must be a table ([{section}])")
    merged: dict[str, dict[str, Any]] = {s: dict(raw.get(s, {})) for s in names}
    origins: dict[str, dict[str, str]] = {s: {k: file_label for k in merged[s]} for s in names}
    for (section, key), (value, origin) in (overrides or {}).items():
        merged[section][key] = value
        origins[section][key] = origin
    return merged, origins, file_label


def check_broker(mqtt: Any, raw: Mapping[str, Any], origins: Mapping[str, str], file_label: str) -> Any:
    """The ``[mqtt]`` checks every audiocap client shares; returns ``mqtt`` with its password read.

    ``mqtt`` is a frozen dataclass with the broker keys (host, username,
    client_id, prefix, discovery_prefix, ca_file, cert_file, key_file): the
    daemon's :class:`MqttConfig` or the history's.

    Raises:
      ConfigError: one line naming the key and the file or flag.
    """
    if not mqtt.host.strip():
        raise ConfigError(f"{origins.get('host', '?')}: [mqtt] host is empty (a broker host name or address)")
    for key in ("host", "username", "client_id"):
        value = getattr(mqtt, key)
        if any(ord(c) < 0x20 or c == "\x7f" for c in value):
            raise ConfigError(f"{origins.get(key, '?')}: [mqtt] {key}: {value!r} holds a control character")
    for key in ("prefix", "discovery_prefix"):
        value = getattr(mqtt, key)
        if not value or any(c in value for c in "#+") or value.startswith("/") or value.endswith("/"):
            raise ConfigError(f"{origins.get(key, '?')}: [mqtt] {key}: {value!r} is not a valid topic prefix")
    if bool(mqtt.cert_file) != bool(mqtt.key_file):
        raise ConfigError(f"{origins.get('cert_file', origins.get('key_file', '?'))}: [mqtt] cert_file and key_file "
                          "go together")
    for key in ("ca_file", "cert_file", "key_file"):
        value = getattr(mqtt, key)
        if value and not os.path.isfile(value):
            raise ConfigError(f"{origins.get(key, '?')}: [mqtt] {key}: no such file {value}")
    _check_tls_files(mqtt, origins)
    return dataclasses.replace(mqtt, password=_read_password(raw, origins.get("password_file", file_label)))


def load_config(
    path: str | os.PathLike | None = None,
    overrides: Mapping[tuple[str, str], tuple[Any, str]] | None = None,
) -> Config:
    """Reads, merges and validates the configuration.

    Args:
      path: a TOML file; ``None`` reads :data:`DEFAULT_CONFIG_PATH` if it exists.
      overrides: ``{(section, key): (value, origin)}`` from command-line flags;
        ``origin`` (e.g. ``"--mqtt-port"``) names the flag in errors.

    Returns:
      The frozen :class:`Config`.

    Raises:
      ConfigError: one line naming the key and the file or flag.
    """
    merged, origins, file_label = read_tables(path, DEFAULT_CONFIG_PATH, SECTIONS, overrides)
    if "password" in merged["mqtt"]:
        _build_section(MqttConfig, {"password": ""}, origins["mqtt"], "mqtt")  # raises, naming it
    built = {s: _build_section(cls, merged[s], origins[s], s) for s, cls in SECTIONS.items()}
    daemon: DaemonConfig = built["daemon"]
    where = origins["daemon"]
    try:
        parse_source(daemon.source)
    except ValueError as exc:
        raise ConfigError(f"{where.get('source', '?')}: [daemon] source: {exc}") from None
    if not daemon.sinks:
        raise ConfigError(f"{where.get('sinks', '?')}: [daemon] sinks: at least one sink is needed")
    for spec in daemon.sinks:
        try:
            parse_sink(spec)
        except ValueError as exc:
            raise ConfigError(f"{where.get('sinks', '?')}: [daemon] sinks: {exc}") from None
    if sanitize_node(daemon.node) != daemon.node:
        raise ConfigError(
            f"{where.get('node', '?')}: [daemon] node: {daemon.node!r} may only hold letters, digits, _ and -"
        )
    mic: MicConfig = built["mic"]
    if mic.retry_max_s < mic.retry_min_s:
        raise ConfigError(f"{origins['mic'].get('retry_max_s', '?')}: [mic] retry_max_s is below retry_min_s")
    if mic.sample_rate:
        problem = resample_problem(mic.sample_rate)
        if problem:
            raise ConfigError(f"{origins['mic'].get('sample_rate', '?')}: [mic] sample_rate: {problem}")
    mqtt: MqttConfig = built["mqtt"]
    mo = origins["mqtt"]
    if mqtt.reconnect_max_s < mqtt.reconnect_min_s:
        raise ConfigError(f"{mo.get('reconnect_max_s', '?')}: [mqtt] reconnect_max_s is below reconnect_min_s")
    mqtt = check_broker(mqtt, merged["mqtt"], mo, file_label)
    ev: EventsConfig = built["events"]
    if ev.off_ratio == 0:  # every caption would stay on for ever
        raise ConfigError(f"{origins['events'].get('off_ratio', '?')}: [events] off_ratio = 0 would never end "
                          "a caption (expected a ratio above 0, at most 1)")
    model: ModelConfig = built["model"]
    if model.runtime == "litert" and "vggish" not in origins["model"]:
        # LiteRT runs only .tflite files: the default is then the edge file, where setup put it.
        edge = _default_edge_vggish()
        if edge:
            built["model"] = model = dataclasses.replace(model, vggish=edge)
    _check_classifier(built["model"], origins["model"])
    _check_class_names(ev, built["model"], origins["events"])
    for cls, off in ev.off_thresholds.items():
        on = ev.thresholds.get(cls)
        if on is not None and off > on:
            raise ConfigError(
                f"{origins['events'].get('off_thresholds', '?')}: [events] off_thresholds.{cls} = {off} "
                f"is above the on threshold {on}"
            )
    return Config(daemon=daemon, mic=mic, model=built["model"], events=ev, mqtt=mqtt, path=file_label)


def _bundle_classes(model: ModelConfig) -> tuple[str, str] | tuple[tuple[str, ...], str]:
    """The class names of the bundle ``[model] classifier`` names (its metadata only,
    nothing loaded), and how to name it; no names if it cannot be read (loading it
    will then say why)."""
    try:
        from pipeline.classifier import read_metadata, resolve_bundle

        path = resolve_bundle(model.classifier or None)
        meta = read_metadata(path)
    except Exception:  # noqa: BLE001 - reported when the models load
        return (), model.classifier or "the bundled model"
    return tuple(meta["_class_names"]), f"{meta.get('name')}@{meta.get('version')}"


def _check_classifier(model: ModelConfig, origins: Mapping[str, str]) -> None:
    """``[model] classifier`` must be a bundle directory or a shipped bundle's name (a typo names the file)."""
    if not model.classifier:
        return
    try:
        from pipeline.classifier import resolve_bundle, shipped_bundles

        if resolve_bundle(model.classifier).is_dir():
            return
        names = list(shipped_bundles())
    except Exception:  # noqa: BLE001 - reported when the models load
        return
    import difflib

    close = difflib.get_close_matches(model.classifier, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ConfigError(f"{origins.get('classifier', '?')}: [model] classifier: {model.classifier!r} is neither a "
                      f"bundle directory nor a shipped bundle ({', '.join(names)}); {hint}leave it empty for "
                      "the default bundle")


def _check_class_names(ev: EventsConfig, model: ModelConfig, origins: Mapping[str, str]) -> None:
    """Per-class ``[events]`` keys must name classes of the classifier in use."""
    tables = {k: getattr(ev, k) for k in ("thresholds", "off_thresholds", "captions") if getattr(ev, k)}
    if not tables:
        return
    classes, bundle = _bundle_classes(model)
    if not classes:
        return
    for key, table in tables.items():
        for cls in table:
            if cls not in classes:
                raise ConfigError(f"{origins.get(key, '?')}: [events] {key}.{cls}: unknown class (the classifier "
                                  f"{bundle} has {', '.join(classes)})")


def _check_tls_files(mqtt: MqttConfig, origins: Mapping[str, str]) -> None:
    """Loads the CA and client certificate now, so a wrong file fails at start-up, not at each connect."""
    import ssl

    if mqtt.ca_file:
        try:
            ssl.create_default_context(cafile=mqtt.ca_file)
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"{origins.get('ca_file', '?')}: [mqtt] ca_file: {mqtt.ca_file} is not a PEM "
                              f"CA certificate ({getattr(exc, 'reason', None) or exc})") from None
    if mqtt.cert_file and mqtt.key_file:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(mqtt.cert_file, mqtt.key_file)
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"{origins.get('cert_file', '?')}: [mqtt] cert_file/key_file: {mqtt.cert_file} and "
                              f"{mqtt.key_file} are not a matching PEM certificate and key "
                              f"({getattr(exc, 'reason', None) or exc})") from None


def resample_problem(rate: int) -> str | None:
    """Why audio at ``rate`` Hz cannot be captioned, or ``None`` when it can.

    Any rate is resampled to 16 kHz by a polyphase table; for a rate sharing
    almost no factor with 16000 (e.g. 44101 Hz) that table would be gigabytes.
    """
    from pipeline.audio import StreamingResampler

    try:
        StreamingResampler(rate)
    except ValueError as exc:
        return str(exc)
    return None


# --- Output ----------------------------------------------------------------------

def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }" if value else "{}"
    raise TypeError(type(value).__name__)


def to_toml(config: Config) -> str:
    """The effective configuration as TOML, secrets masked (for ``--check-config``)."""
    lines = []
    if config.path:
        lines.append(f"# read from {config.path}")
    for section in SECTIONS:
        obj = getattr(config, section)
        lines.append(f"[{section}]")
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.metadata.get("secret"):
                lines.append(f"# {f.name} = {'(set, masked)' if value else '(not set)'}")
                continue
            if f.metadata.get("bundle_default") and value == FROM_BUNDLE:
                lines.append(f"# {f.name} = (from the classifier bundle)")
                continue
            lines.append(f"{f.name} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def describe(config: Config) -> str:
    """One line with the effective configuration for the start-up log (no secrets),
    naming only what is in use: no VGGish, PCA or runtime when the source gives
    embeddings (replay), no broker without an MQTT sink."""
    d, m = config.daemon, config.model
    parts = [f"node={d.node} source={d.source} sinks={','.join(d.sinks)} pace={d.pace}"]
    if not d.source.startswith("replay:"):
        parts.append(f"vggish={m.vggish} pca={m.pca} runtime={m.runtime}")
    parts.append(f"classifier={m.classifier or '(bundled)'}")
    if any(spec.split(":", 1)[0] == "mqtt" for spec in d.sinks):
        q = config.mqtt
        parts.append(f"mqtt={q.host}:{q.effective_port} tls={q.tls} user={q.username or '-'} "
                     f"password={'***' if q.password else '-'}")
    return " ".join(parts)
