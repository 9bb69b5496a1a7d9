"""``audiocap-history``: keeps every node's captions and answers "what did I miss?".

Exit codes (sysexits, as the daemon's): 0 clean stop; 2 bad command line;
65 the database is damaged, not an SQLite file or from a newer version (left
untouched); 73 the database cannot be created; 78 bad configuration; 1 an
unexpected failure.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Any, Sequence

from daemon.exitcodes import EX_CANTCREAT, EX_CONFIG, EX_DATAERR

_LOGGER = logging.getLogger("audiocap-history")

_FLAGS = {
    "db": ("history", "db", "--db"),
    "retention_days": ("history", "retention_days", "--retention-days"),
    "max_db_mb": ("history", "max_db_mb", "--max-db-mb"),
    "mqtt_host": ("mqtt", "host", "--mqtt-host"),
    "mqtt_port": ("mqtt", "port", "--mqtt-port"),
    "mqtt_user": ("mqtt", "username", "--mqtt-user"),
    "prefix": ("mqtt", "prefix", "--prefix"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="audiocap-history",
                                description="Keeps the captions of every audiocap node in SQLite and answers "
                                            "queries over MQTT 5 (docs/history.md).")
    p.add_argument("--config", metavar="FILE", help="TOML configuration (default /etc/audiocap/history.toml if present)")
    p.add_argument("--db", metavar="FILE", help="the SQLite database (made when missing)")
    p.add_argument("--retention-days", metavar="D", type=float, help="keep captions this long (default 30)")
    p.add_argument("--max-db-mb", metavar="MB", type=float, help="size bound of the database (default 512)")
    p.add_argument("--mqtt-host", metavar="H")
    p.add_argument("--mqtt-port", metavar="P", type=int)
    p.add_argument("--mqtt-user", metavar="U", help="user name (password: $AUDIOCAP_MQTT_PASSWORD or password_file)")
    p.add_argument("--prefix", metavar="P", help="the daemons' topic prefix (default audiocap)")
    p.add_argument("--debug", action="store_true", help="debug logging")
    p.add_argument("--check-config", action="store_true", help="validate, open the database, exit")
    return p


def _fail(message: str, code: int) -> int:
    print(f"audiocap-history: error: {message}", file=sys.stderr, flush=True)
    return code


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from daemon.config import ConfigError
    from history.config import load_config

    overrides: dict[tuple[str, str], tuple[Any, str]] = {}
    for attr, (section, key, flag) in _FLAGS.items():
        if getattr(args, attr) is not None:
            overrides[(section, key)] = (getattr(args, attr), flag)
    if args.debug:
        overrides[("history", "log_level")] = ("debug", "--debug")
    try:
        config = load_config(args.config, overrides)
    except ConfigError as exc:
        return _fail(str(exc), EX_CONFIG)
    under_systemd = bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))
    logging.basicConfig(level=getattr(logging, config.history.log_level.upper()), stream=sys.stderr, force=True,
                        format=("" if under_systemd else "%(asctime)s ") + "%(levelname)s %(name)s: %(message)s")

    from daemon.sdnotify import Notifier
    from history.service import HistoryService
    from history.store import Store, StoreError

    h = config.history
    try:
        store = Store(h.db, max_bytes=int(h.max_db_mb * 1024 * 1024), retention_ms=int(h.retention_days * 86_400_000))
    except StoreError as exc:
        created = "cannot make" in str(exc) or "cannot open" in str(exc)
        return _fail(str(exc), EX_CANTCREAT if created else EX_DATAERR)
    if args.check_config:
        print(f"configuration ok; database {store.path}: {store.count()} captions, {store.used_bytes()} bytes in use")
        store.close()
        return 0
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file-size limit is a failed write, handled, not a kill
    service = HistoryService(config, store, Notifier())
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: service.stop())
    return service.run()


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        code = run(argv)
    except Exception as exc:  # a bug: one line for the user, the traceback with --debug
        if "--debug" in (sys.argv[1:] if argv is None else argv):
            _LOGGER.exception("unexpected failure")
        code = _fail(f"unexpected failure: {type(exc).__name__}: {exc}", 1)
    logging.shutdown()
    sys.exit(code)


if __name__ == "__main__":
    main()
