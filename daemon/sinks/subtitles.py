"""The WebVTT/SRT sinks: subtitles of the sounds of a recording."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from daemon.sinks.base import SinkStats
from pipeline import captions
from pipeline.events import CaptionEvent

_LOGGER = logging.getLogger(__name__)

REWRITE_INTERVAL_S = 1.0
"""At most one rewrite of the file per this many seconds while running (and
never more often than every ten times the last rewrite took)."""


class SubtitleSink:
    """Subtitles of the sounds of a recording.

    Cue times are relative to the first audio of the run. A writer thread
    rewrites the file atomically after finished captions, at most once per
    :data:`REWRITE_INTERVAL_S` or ten rewrite times (a killed run leaves the
    captions finished up to then), and :meth:`close` writes the final file. Formatting tens of
    thousands of cues takes a fifth of a second, so it never runs on the
    caption thread, and a fast replay does not rewrite the file per caption.
    (Cues are rewritten rather than appended because WebVTT orders cues by
    start time and captions end out of start order.)

    Args:
      path: output file.
      fmt: ``vtt`` or ``srt``.
    """

    def __init__(self, path: str, fmt: str) -> None:
        if fmt not in ("vtt", "srt"):
            raise ValueError(f"subtitle format must be vtt or srt; got {fmt!r}")
        self.kind = fmt
        self.path = path
        self.fmt = fmt
        self.failed = False
        self._origin: float | None = None
        self._events: list[CaptionEvent] = []
        self._ended = 0
        self._written_ended = 0
        self._cond = threading.Condition()
        self._closing = False
        self._writer = threading.Thread(target=self._write_loop, name=f"audiocap-{fmt}-writer", daemon=True)

    def start(self) -> None:
        """Checks that the file can be written (fails early, before the models load).

        Raises:
          OSError: the file cannot be created.
        """
        with open(self.path, "a", encoding="utf-8"):
            pass
        if not self._writer.is_alive():
            self._writer.start()

    def set_origin(self, t: float) -> None:
        """The audio time cue 00:00:00.000 refers to (the first sample)."""
        if self._origin is None:
            self._origin = t

    def on_scores(self, t_start: float, t_end: float, scores: Any, origin: float,
                  level_dbfs: float | None = None) -> None:
        """Only used to learn the origin if it was not set."""
        self.set_origin(t_start)

    def on_event(self, event: CaptionEvent) -> None:
        """Keeps the edge; a finished caption wakes the writer."""
        with self._cond:
            self._events.append(event)
            if event.type == "end":
                self._ended += 1
                self._cond.notify_all()

    def _write(self) -> None:
        with self._cond:
            cues = captions.subtitle_cues(list(self._events), self._origin or 0.0)
            ended = self._ended
        text = captions.format_webvtt(cues) if self.fmt == "vtt" else captions.format_srt(cues)
        captions.write_atomic(self.path, text)
        self._written_ended = ended

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while not self._closing and self._ended == self._written_ended:
                    self._cond.wait()
                if self._closing:
                    return
            t = time.monotonic()
            try:
                self._write()
            except OSError as exc:
                _LOGGER.error("cannot write subtitles to %s: %s", self.path, exc.strerror or exc)
            # A long file takes long to format: pause ten times that, so the
            # writer never takes more than a tenth of the CPU from the captions.
            pause = max(REWRITE_INTERVAL_S, 10 * (time.monotonic() - t))
            with self._cond:
                self._cond.wait_for(lambda: self._closing, timeout=pause)

    def on_metrics(self, metrics: dict[str, Any]) -> None:
        """Not used."""

    def drain(self, timeout: float) -> bool:
        """Nothing to deliver: the final file is written at :meth:`close`."""
        return True

    def close(self) -> None:
        """Stops the writer and writes the final file."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._writer.is_alive():
            self._writer.join(timeout=5.0)
        try:
            self._write()
        except OSError as exc:
            _LOGGER.error("cannot write subtitles to %s: %s", self.path, exc.strerror or exc)
            return
        _LOGGER.info("wrote %s subtitles to %s", self.fmt.upper(), self.path)

    def stats(self) -> SinkStats:
        """Cues finished and written."""
        return SinkStats(self.kind, delivered=self._written_ended, queued=self._ended - self._written_ended)
