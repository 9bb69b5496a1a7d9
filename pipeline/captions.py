"""Caption payloads (the MQTT/stdout JSON) and subtitles (WebVTT, SRT).

The caption event JSON is a public contract (DESIGN.md): keys are stable, new
keys may be added, none renamed. Times are UTC ISO 8601 with milliseconds,
from the audio clock.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from pipeline.events import CaptionEvent

SCHEMA_VERSION = 1
"""``schema`` field of the caption payload; bumped only on an incompatible change."""


def iso_utc(t: float) -> str:
    """UTC epoch seconds -> ``2026-11-23T21:00:01.234Z`` (milliseconds, truncated)."""
    dt = datetime.fromtimestamp(t, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def event_payload(event: CaptionEvent, node: str, source: str, model: str) -> dict[str, Any]:
    """The caption event object published on ``<prefix>/<node>/events`` and stdout.

    Args:
      event: a start or end edge from :class:`pipeline.events.EventTracker`.
      node: this daemon's node name.
      source: the audio source, e.g. ``mic:default`` or ``file:talk.wav``.
      model: ``name@version`` of the classifier.

    Returns:
      A JSON-serialisable dict with the keys of DESIGN.md in their order, then
      the keys added since: ``urgent`` (the class is one people must not miss)
      and ``level_dbfs`` (the loudest level heard during the caption so far,
      RMS in dBFS, or ``null`` without audio).
    """
    return {
        "schema": SCHEMA_VERSION,
        "event_id": event.event_id,
        "type": event.type,
        "label": event.label,
        "caption": event.caption,
        "score": round(float(event.score), 4),
        "start": iso_utc(event.start),
        "end": iso_utc(event.end) if event.end is not None else None,
        "node": node,
        "source": source,
        "model": model,
        "urgent": bool(event.urgent),
        "level_dbfs": _level(event.level_dbfs),
    }


def _level(value: float | None) -> float | None:
    return None if value is None else round(float(value), 1)


def scores_payload(
    t_start: float,
    t_end: float,
    classes: Sequence[str],
    scores: Iterable[float],
    node: str,
    model: str,
    level_dbfs: float | None = None,
) -> dict[str, Any]:
    """The per-window message on ``<prefix>/<node>/scores``.

    ``t`` is the end of the scored embedding: the audio up to that instant has
    been heard. ``window_start`` is where that embedding begins. ``level_dbfs``
    is the level of its 0.96 s of audio (RMS, dBFS, floored at
    ``params.LEVEL_FLOOR_DBFS``), ``null`` when the source has no audio.
    """
    return {
        "t": iso_utc(t_end),
        "window_start": iso_utc(t_start),
        "scores": {name: round(float(s), 4) for name, s in zip(classes, scores)},
        "node": node,
        "model": model,
        "level_dbfs": _level(level_dbfs),
    }


def dumps(obj: Mapping[str, Any]) -> str:
    """Compact JSON, UTF-8 characters kept as they are."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _clock(seconds: float, sep: str) -> str:
    ms = max(0, int(round(seconds * 1000)))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def subtitle_cues(events: Iterable[CaptionEvent], origin: float) -> list[tuple[float, float, str]]:
    """Pairs start/end edges into cues ``(start_s, end_s, text)`` relative to ``origin``.

    Args:
      events: caption events of one run; every event must have ended (an
        ``end`` edge carries both times, so only ``end`` edges are used).
      origin: the audio time of the recording's first sample (UTC epoch seconds).

    Returns:
      Cues sorted by start, then label order of arrival.
    """
    cues = [
        (ev.start - origin, (ev.end if ev.end is not None else ev.start) - origin, ev.caption)
        for ev in events
        if ev.type == "end"
    ]
    return sorted(cues, key=lambda c: (c[0], c[1]))


def format_webvtt(cues: Sequence[tuple[float, float, str]]) -> str:
    """WebVTT text for ``cues`` (overlapping cues are allowed and shown together)."""
    lines = ["WEBVTT", ""]
    for i, (start, end, text) in enumerate(cues, 1):
        lines += [str(i), f"{_clock(start, '.')} --> {_clock(end, '.')}", text, ""]
    return "\n".join(lines)


def format_srt(cues: Sequence[tuple[float, float, str]]) -> str:
    """SubRip text for ``cues``."""
    lines = []
    for i, (start, end, text) in enumerate(cues, 1):
        lines += [str(i), f"{_clock(start, ',')} --> {_clock(end, ',')}", text, ""]
    return "\n".join(lines)


def write_atomic(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` to ``path`` through a temporary file and a rename, so a
    reader never sees half a file."""
    out = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent if str(out.parent) else ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        os.replace(tmp, out)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return out
