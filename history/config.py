"""The history service's configuration: TOML file -> environment (secrets) -> flags -> frozen dataclasses.

The same rules and helpers as the daemon's (:mod:`daemon.config`): an unknown
key, a wrong type or an out-of-range value is refused with one line naming the
key and the file or flag; the MQTT password comes from
``$AUDIOCAP_MQTT_PASSWORD``, ``[mqtt] password_file`` or the systemd credential
``mqtt_password``, never from the command line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from daemon.config import ConfigError, _build_section, _f, check_broker, read_tables
from pipeline import params

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
    merged, origins, label = read_tables(path, DEFAULT_CONFIG_PATH, SECTIONS, overrides)
    store: StoreConfig = _build_section(StoreConfig, merged["history"], origins["history"], "history")
    mqtt: BrokerConfig = _build_section(BrokerConfig, merged["mqtt"], origins["mqtt"], "mqtt")
    ho, mo = origins["history"], origins["mqtt"]
    if not store.db:
        raise ConfigError(f"{ho.get('db', label or 'defaults')}: [history] db: no database file given "
                          "(use --db FILE; under systemd it defaults to $STATE_DIRECTORY/history.sqlite3)")
    if not mqtt.client_id:
        raise ConfigError(f"{mo.get('client_id', '?')}: [mqtt] client_id must be fixed (a persistent session)")
    mqtt = check_broker(mqtt, merged["mqtt"], mo, label)
    return HistoryConfig(history=store, mqtt=mqtt, path=label)
