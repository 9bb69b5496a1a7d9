"""Where captions go: the sink interface, stdout JSON lines, WebVTT/SRT files.

The MQTT sink lives in :mod:`daemon.mqtt`. All sinks receive the same calls
from the worker thread (``on_scores``, ``on_event``) and from the main thread
(``on_metrics``, ``drain``, ``close``); :func:`make_sinks` builds them from the
configuration.
"""

from __future__ import annotations

import logging
import sys
import threading
from dataclasses import dataclass
from typing import IO, Any, Protocol

from daemon.config import Config, parse_sink
from pipeline import captions
from pipeline.events import CaptionEvent

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class SinkContext:
    """What every payload says about its origin.

    Attributes:
      node: node name.
      source: the source as named in payloads (``mic:default``…).
      model: ``name@version`` of the classifier.
      classes: class names in score order.
      captions: class -> caption text.
    """

    node: str
    source: str
    model: str
    classes: tuple[str, ...]
    captions: dict[str, str]


class Sink(Protocol):
    """The calls a sink receives."""

    def start(self) -> None:
        """Connects/opens; must not block on a remote peer."""

    def on_scores(self, t_start: float, t_end: float, scores: Any, origin: float) -> None:
        """One window's scores (worker thread)."""

    def on_event(self, event: CaptionEvent) -> None:
        """One caption edge (worker thread); must never lose it silently."""

    def on_metrics(self, metrics: dict[str, Any]) -> None:
        """The periodic health message (main thread)."""

    def drain(self, timeout: float) -> bool:
        """Waits up to ``timeout`` s until everything accepted is delivered."""

    def close(self) -> None:
        """Says goodbye and releases resources (main thread, after the worker ended)."""

    def stats(self) -> dict[str, Any]:
        """Counters for the metrics message."""


class StdoutSink:
    """One caption event JSON object per line on stdout (flushed per line).

    Args:
      ctx: payload context.
      stream: where to write (default ``sys.stdout``).
    """

    def __init__(self, ctx: SinkContext, stream: IO[str] | None = None) -> None:
        self.ctx = ctx
        self.stream = stream if stream is not None else sys.stdout
        self.written = 0
        self.failed = False
        """True once stdout is gone (a closed pipe): nothing more can be written."""

    def start(self) -> None:
        """Nothing to open."""

    def on_scores(self, t_start: float, t_end: float, scores: Any, origin: float) -> None:
        """Scores are not written to stdout (captions only)."""

    def on_event(self, event: CaptionEvent) -> None:
        """Writes the caption payload as one line."""
        if self.failed:
            return
        line = captions.dumps(captions.event_payload(event, self.ctx.node, self.ctx.source, self.ctx.model))
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
            self.written += 1
        except (BrokenPipeError, ValueError) as exc:  # reader went away / stream closed
            self.failed = True
            _LOGGER.warning("stdout is closed (%s); captions are no longer written there", exc)

    def on_metrics(self, metrics: dict[str, Any]) -> None:
        """Metrics are logged by the service, not written to stdout."""

    def drain(self, timeout: float) -> bool:
        """Lines are flushed as they are written."""
        return True

    def close(self) -> None:
        """Flushes stdout."""
        try:
            self.stream.flush()
        except (BrokenPipeError, ValueError):
            pass

    def stats(self) -> dict[str, Any]:
        """Lines written."""
        return {"stdout_lines": self.written}


class SubtitleSink:
    """Subtitles of the sounds of a recording, written when the run ends.

    Cue times are relative to the first audio of the run. The file is written
    atomically at :meth:`close` (and rewritten after each finished caption, so a
    killed run leaves the captions finished so far).

    Args:
      path: output file.
      fmt: ``vtt`` or ``srt``.
    """

    def __init__(self, path: str, fmt: str) -> None:
        if fmt not in ("vtt", "srt"):
            raise ValueError(f"subtitle format must be vtt or srt; got {fmt!r}")
        self.path = path
        self.fmt = fmt
        self._origin: float | None = None
        self._events: list[CaptionEvent] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        """Checks that the file can be written (fails early, before the models load)."""
        with open(self.path, "a", encoding="utf-8"):
            pass

    def set_origin(self, t: float) -> None:
        """The audio time cue 00:00:00.000 refers to (the first sample)."""
        if self._origin is None:
            self._origin = t

    def on_scores(self, t_start: float, t_end: float, scores: Any, origin: float) -> None:
        """Only used to learn the origin if it was not set."""
        self.set_origin(t_start)

    def on_event(self, event: CaptionEvent) -> None:
        """Keeps the edge; rewrites the file when an event ended."""
        with self._lock:
            self._events.append(event)
        if event.type == "end":
            self._write()

    def _write(self) -> None:
        with self._lock:
            cues = captions.subtitle_cues(self._events, self._origin or 0.0)
        text = captions.format_webvtt(cues) if self.fmt == "vtt" else captions.format_srt(cues)
        captions.write_atomic(self.path, text)

    def on_metrics(self, metrics: dict[str, Any]) -> None:
        """Not used."""

    def drain(self, timeout: float) -> bool:
        """Nothing queued."""
        return True

    def close(self) -> None:
        """Writes the final file."""
        self._write()
        _LOGGER.info("wrote %s subtitles to %s", self.fmt.upper(), self.path)

    def stats(self) -> dict[str, Any]:
        """Cues so far."""
        return {f"{self.fmt}_cues": sum(1 for e in self._events if e.type == "end")}


def make_sinks(config: Config, ctx: SinkContext) -> list[Any]:
    """Builds the sinks named by ``[daemon] sinks``."""
    out: list[Any] = []
    for spec in config.daemon.sinks:
        kind, arg = parse_sink(spec)
        if kind == "stdout":
            out.append(StdoutSink(ctx))
        elif kind in ("vtt", "srt"):
            out.append(SubtitleSink(arg, kind))
        else:
            from daemon.mqtt import MqttSink

            out.append(MqttSink(config.mqtt, ctx))
    return out
