"""The stdout sink: one caption event JSON object per line."""

from __future__ import annotations

import logging
import sys
from typing import IO, Any

from daemon.sinks.base import SinkContext, SinkStats
from pipeline import captions
from pipeline.events import CaptionEvent

_LOGGER = logging.getLogger(__name__)


class StdoutSink:
    """One caption event JSON object per line on stdout (flushed per line).

    A line is a few hundred bytes written once per caption edge, so it is
    written on the caller's thread: the order on stdout is the order of events.

    Args:
      ctx: payload context.
      stream: where to write (default ``sys.stdout``).
    """

    kind = "stdout"

    def __init__(self, ctx: SinkContext, stream: IO[str] | None = None) -> None:
        self.ctx = ctx
        self.stream = stream if stream is not None else sys.stdout
        self.written = 0
        self.failed = False
        """True once stdout is gone (a closed pipe): nothing more can be written."""

    def start(self) -> None:
        """Nothing to open."""

    def on_scores(self, t_start: float, t_end: float, scores: Any, origin: float,
                  level_dbfs: float | None = None) -> None:
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

    def stats(self) -> SinkStats:
        """Lines written."""
        return SinkStats(self.kind, delivered=self.written)
