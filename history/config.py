"""The history service's configuration: TOML file -> environment (secrets) -> flags -> frozen dataclasses.

The same rules and helpers as the daemon's (:mod:`daemon.config`): an unknown
key, a wrong type or an out-of-range value is refused with one line naming the
key and the file or flag; the MQTT password comes from
``$AUDIOCAP_MQTT_PASSWORD``, ``[mqtt] password_file`` or the systemd credential
``mqtt_password``, never from the command line.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from daemon.config import ConfigError, _build_section, _check_tls_files, _f, _read_password
from pipeline import params

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_CONFIG_PATH = Path("/etc/audiocap/history.toml")
"""Read when it exists and no ``--config`` is given."""
DB_NAME = "history.sqlite3"
"""Under systemd the database is ``$STATE_DIRECTORY/history.sqlite3``."""
SERVICE_LEVEL = "_history"
"""The history's own topic level under the prefix (``audiocap/_history/…``). A node
name never starts with ``_`` (the daemon strips it), so it cannot clash with a node."""


def _default_db() -> str:
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return str(Path(state) / DB_NAME) if state else ""


@dataclass(frozen=True)
class StoreConfig:
    """``[history]``: the database and what it keeps."""

    db: str = _f(factory=_default_db, doc="SQLite file; default $STATE_DIRECTORY/history.sqlite3 under systemd.")
    retention_days: float = _f(30.0, "Captions older than this many days are deleted.", lo=0.01, hi=36500)
    max_db_mb: float = _f(512.0, "Size bound of the database; the oldest captions go first.", lo=1, hi=1_000_000)
    max_answer: int = _f(500, "Most captions in one answer (a request may ask for fewer).", lo=1, hi=10_000)
    max_requests_per_s: float = _f(20.0, "Requests answered per second; more are skipped and counted.",
                                   lo=0.1, hi=10_000)
    log_level: str = _f("info", "Logging level.", choices=("debug", "info", "warning", "error"))


@dataclass(frozen=True)
class BrokerConfig:
    """``[mqtt]``: the broker (the keys mean what they mean for the daemon)."""

    host: str = _f("localhost", "Broker host.")
    port: int = _f(0, "Broker port; 0 = 1883, or 8883 with TLS.", lo=0, hi=65535)
    prefix: str = _f("audiocap", "First topic level (the daemons' prefix).")
    client_id: str = _f("audiocap-history", "Fixed MQTT client id: the broker keeps this session's captions "
                                            "while the service is away.")
    session_expiry_s: int = _f(7 * 86400, "How long the broker keeps the session while the service is away.",
                               lo=60, hi=0xFFFFFFFE)
    keepalive_s: int = _f(params.MQTT_KEEPALIVE_SECONDS, "Keep-alive, seconds.", lo=5, hi=3600)
    username: str = _f("", "User name; the password comes from $AUDIOCAP_MQTT_PASSWORD or password_file.")
    password_file: str = _f("", "File holding the broker password (first line).")
    tls: bool = _f(False, "Connect with TLS.")
    ca_file: str = _f("", "CA certificate (PEM) for TLS; empty = the system's.")
    cert_file: str = _f("", "Client certificate (PEM) for TLS client authentication.")
    key_file: str = _f("", "Client key (PEM) for TLS client authentication.")
    tls_insecure: bool = _f(False, "Skip the broker host-name check (testing only).")
    discovery: bool = _f(True, "Publish Home Assistant discovery for the digest sensors.")
    discovery_prefix: str = _f("homeassistant", "Home Assistant discovery prefix.")
    password: str = _f("", "(from the environment or password_file only)", secret=True)

    @property
    def effective_port(self) -> int:
        """The port to connect to."""
        return self.port or (params.MQTT_TLS_PORT if self.tls else params.MQTT_PORT)

    def topic(self, *levels: str) -> str:
        """``<prefix>/_history/<levels…>``."""
        return "/".join((self.prefix, SERVICE_LEVEL, *levels))


@dataclass(frozen=True)
class HistoryConfig:
    """The whole configuration."""

    history: StoreConfig = field(default_factory=StoreConfig)
    mqtt: BrokerConfig = field(default_factory=BrokerConfig)
    path: str = ""


SECTIONS: dict[str, type] = {"history": StoreConfig, "mqtt": BrokerConfig}


def load_config(path: str | os.PathLike | None = None,
                overrides: Mapping[tuple[str, str], tuple[Any, str]] | None = None) -> HistoryConfig:
    """Reads, merges and validates the configuration.

    Raises:
      ConfigError: one line naming the key and the file or flag.
    """
    raw: dict[str, Any] = {}
    label = ""
    if path is None and DEFAULT_CONFIG_PATH.is_file():
        path = DEFAULT_CONFIG_PATH
    if path is not None:
        label = os.fspath(path)
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"{label}: cannot read the configuration file: {exc.strerror or exc}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{label}: invalid TOML: {exc}") from None
    for section, value in raw.items():
        if section not in SECTIONS or not isinstance(value, dict):
            raise ConfigError(f"{label}: unknown or malformed table [{section}]; known tables: {', '.join(SECTIONS)}")
    merged = {s: dict(raw.get(s, {})) for s in SECTIONS}
    origins = {s: {k: label for k in merged[s]} for s in SECTIONS}
    for (section, key), (value, origin) in (overrides or {}).items():
        merged[section][key] = value
        origins[section][key] = origin
    store: StoreConfig = _build_section(StoreConfig, merged["history"], origins["history"], "history")
    mqtt: BrokerConfig = _build_section(BrokerConfig, merged["mqtt"], origins["mqtt"], "mqtt")
    ho, mo = origins["history"], origins["mqtt"]
    if not store.db:
        raise ConfigError(f"{ho.get('db', label or 'defaults')}: [history] db: no database file given "
                          "(use --db FILE; under systemd it defaults to $STATE_DIRECTORY/history.sqlite3)")
    if not mqtt.host.strip() or any(ord(c) < 0x20 for c in mqtt.host + mqtt.username + mqtt.client_id):
        raise ConfigError(f"{mo.get('host', '?')}: [mqtt] host, username or client_id is empty or holds a control "
                          "character")
    if not mqtt.client_id:
        raise ConfigError(f"{mo.get('client_id', '?')}: [mqtt] client_id must be fixed (a persistent session)")
    for key in ("prefix", "discovery_prefix"):
        value = getattr(mqtt, key)
        if not value or any(c in value for c in "#+") or value.startswith("/") or value.endswith("/"):
            raise ConfigError(f"{mo.get(key, '?')}: [mqtt] {key}: {value!r} is not a valid topic prefix")
    if bool(mqtt.cert_file) != bool(mqtt.key_file):
        raise ConfigError(f"{mo.get('cert_file', mo.get('key_file', '?'))}: [mqtt] cert_file and key_file go together")
    for key in ("ca_file", "cert_file", "key_file"):
        value = getattr(mqtt, key)
        if value and not os.path.isfile(value):
            raise ConfigError(f"{mo.get(key, '?')}: [mqtt] {key}: no such file {value}")
    _check_tls_files(mqtt, mo)  # type: ignore[arg-type]  (reads the same three keys)
    mqtt = dataclasses.replace(mqtt, password=_read_password(merged["mqtt"], mo.get("password_file", label)))
    return HistoryConfig(history=store, mqtt=mqtt, path=label)
