"""Where captions go: one seam for every sink.

* :mod:`daemon.sinks.base`: the neutral part (``SinkContext``, the ``Sink``
  calls, ``SinkStats``, one stats shape for every kind);
* one module per kind: :mod:`~daemon.sinks.stdout`, :mod:`~daemon.sinks.subtitles`
  (``vtt``/``srt``), :mod:`~daemon.sinks.mqtt` (with its write-ahead
  :mod:`~daemon.sinks.journal`);
* :data:`KINDS`: the registry, one row per kind, which :func:`make_sinks` and
  :func:`check_sinks` read.

All sinks receive the same calls from the worker thread (``on_scores``,
``on_event``, which return at once) and from the main thread (``on_metrics``,
``drain``, ``close``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from daemon.config import Config, parse_sink
from daemon.exitcodes import EX_CANTCREAT, EX_UNAVAILABLE, ExitError
from daemon.sinks.base import Sink, SinkContext, SinkStats
from daemon.sinks.stdout import StdoutSink
from daemon.sinks.subtitles import SubtitleSink

__all__ = ["KINDS", "Sink", "SinkContext", "SinkStats", "StdoutSink", "SubtitleSink", "check_sinks", "make_sinks",
           "probe_sinks"]


def _mqtt(config: Config, ctx: SinkContext, arg: str) -> Any:
    # Imported on use: paho is only needed when captions go to a broker.
    return importlib.import_module("daemon.sinks.mqtt").MqttSink(config.mqtt, ctx)


def _check_mqtt(config: Config, arg: str) -> None:
    from daemon.sinks.journal import Journal, JournalError
    from daemon.sinks.mqtt import spool_path

    path = spool_path(config.mqtt)
    if path is None:
        return
    try:
        Journal(path).check_writable()
    except JournalError as exc:
        raise ExitError(f"{config.path or 'the configuration'}: {exc}", EX_CANTCREAT) from None


def _probe_mqtt(config: Config, arg: str) -> str | None:
    from daemon.sinks.mqtt import probe_broker

    return probe_broker(config.mqtt)


def _check_subtitles(config: Config, arg: str) -> None:
    try:
        with open(arg, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise ExitError(f"cannot write subtitles to {arg}: {exc.strerror or exc}", EX_CANTCREAT) from None


@dataclass(frozen=True)
class SinkKind:
    """One row of the registry.

    Attributes:
      build: ``(config, ctx, arg) -> sink``.
      check: ``(config, arg) -> None``, run at start-up before the models load;
        raises :class:`daemon.exitcodes.ExitError` (one line, an exit code).
      probe: ``(config, arg) -> None or why not``: reaches the remote end once
        (``--check-config --connect``); ``None`` for local sinks.
    """

    build: Callable[[Config, SinkContext, str], Any]
    check: Callable[[Config, str], None]
    probe: Callable[[Config, str], str | None] | None = None


KINDS: dict[str, SinkKind] = {
    "stdout": SinkKind(lambda config, ctx, arg: StdoutSink(ctx), lambda config, arg: None),
    "vtt": SinkKind(lambda config, ctx, arg: SubtitleSink(arg, "vtt"), _check_subtitles),
    "srt": SinkKind(lambda config, ctx, arg: SubtitleSink(arg, "srt"), _check_subtitles),
    "mqtt": SinkKind(_mqtt, _check_mqtt, _probe_mqtt),
}
"""Sink kind (the part of ``--sink`` before ``:``) -> how to check and build it."""


def check_sinks(config: Config) -> None:
    """Start-up checks of every configured sink (files writable, journal directory...).

    Raises:
      ExitError: one line and the exit code to leave with.
    """
    for spec in config.daemon.sinks:
        kind, arg = parse_sink(spec)
        KINDS[kind].check(config, arg)


def probe_sinks(config: Config) -> list[tuple[str, int]]:
    """Reaches every remote sink once; returns ``(why not, exit code)`` for each that failed."""
    out = []
    for spec in config.daemon.sinks:
        kind, arg = parse_sink(spec)
        probe = KINDS[kind].probe
        problem = probe(config, arg) if probe is not None else None
        if problem:
            out.append((problem, EX_UNAVAILABLE))
    return out


def make_sinks(config: Config, ctx: SinkContext) -> list[Sink]:
    """Builds the sinks named by ``[daemon] sinks``."""
    out = []
    for spec in config.daemon.sinks:
        kind, arg = parse_sink(spec)
        out.append(KINDS[kind].build(config, ctx, arg))
    return out
