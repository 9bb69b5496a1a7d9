"""What every sink shares: the payload context, the calls a sink receives, one stats shape.

Nothing here knows a particular sink, so the service depends on this module
only, and each sink module depends on it (never the other way round).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.events import CaptionEvent


@dataclass(frozen=True)
class SinkContext:
    """What every payload says about its origin.

    Attributes:
      node: node name.
      source: the source as named in payloads (``mic:default``…).
      model: ``name@version`` of the classifier.
      classes: class names in score order.
      captions: class -> caption text.
      urgent: the classes whose captions are urgent (alarms, the door).
    """

    node: str
    source: str
    model: str
    classes: tuple[str, ...]
    captions: dict[str, str]
    urgent: tuple[str, ...] = ()


@dataclass(frozen=True)
class SinkStats:
    """One sink's health, the same shape for every kind (the service sums them).

    Attributes:
      kind: the sink kind (``mqtt``, ``stdout``, ``vtt``, ``srt``).
      delivered: caption messages delivered (acknowledged, written).
      queued: accepted and not yet delivered.
      dropped: caption messages given up (a full queue).
      connected: whether the remote end is reachable; ``None`` for local sinks.
      latencies_s: recent end-of-audio-block -> delivery latencies, seconds.
      extra: kind-specific counters, for the debug log only.
      undelivered: caption messages accepted and still not delivered when the
        sink closed (0 before that).
      kept: of those, how many wait on disk for the next start (a journal).
    """

    kind: str
    delivered: int = 0
    queued: int = 0
    dropped: int = 0
    connected: bool | None = None
    latencies_s: tuple[float, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    undelivered: int = 0
    kept: int = 0


class Sink(Protocol):
    """The calls a sink receives."""

    failed: bool
    """True once the sink can never deliver again (e.g. stdout closed)."""

    def start(self) -> None:
        """Connects/opens; must not block on a remote peer."""

    def on_scores(self, t_start: float, t_end: float, scores: Any, origin: float,
                  level_dbfs: float | None = None) -> None:
        """One window's scores and its audio level (worker thread); must return at once."""

    def on_event(self, event: CaptionEvent) -> None:
        """One caption edge (worker thread); must return at once and never lose it silently."""

    def on_metrics(self, metrics: dict[str, Any]) -> None:
        """The periodic health message (main thread)."""

    def drain(self, timeout: float) -> bool:
        """Waits up to ``timeout`` s until everything accepted is delivered."""

    def close(self) -> None:
        """Says goodbye and releases resources (main thread, after the worker ended)."""

    def stats(self) -> SinkStats:
        """Counters for the metrics message."""
