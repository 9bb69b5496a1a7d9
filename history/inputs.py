"""What the history accepts from the broker: caption events and queries, checked field by field.

Anything else is skipped and counted by kind (:class:`Skips`), with one log
line the first time each kind is seen; the counts are in the service's
metrics. Nothing here touches the database.
"""

from __future__ import annotations

import json
import logging
import math
import re
from datetime import datetime
from typing import Any

from history.store import Caption
from pipeline.captions import SCHEMA_VERSION

_LOGGER = logging.getLogger("audiocap-history")

MAX_CAPTION_BYTES = 16 * 1024
"""A caption event is ~400 bytes; anything this big is not one."""
MAX_REQUEST_BYTES = 4 * 1024
MAX_ID = 128
MAX_LABEL = 64
MAX_NODES = 64
MAX_HOURS = 24 * 8
MAX_RANGE_MS = 400 * 86_400_000
# Times between 2000 and 2200: a clock that is off by decades is not believed.
_MIN_MS, _MAX_MS = 946_684_800_000, 7_258_118_400_000
_NODE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

KINDS = {
    "oversized": "larger than the limit",
    "malformed": "not a JSON object",
    "unknown_schema": f"an unknown schema version (this service reads schema {SCHEMA_VERSION})",
    "wrong_type": "a key missing or of the wrong type",
    "bad_request": "a query the service does not understand",
    "no_response_topic": "a query without an MQTT 5 response topic under the history's response/ level",
    "request_flood": "more queries than [history] max_requests_per_s",
}


class Skip(ValueError):
    """Why one message is skipped: ``kind`` (a key of :data:`KINDS`) and a detail."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class Skips:
    """Counts skipped messages by kind; logs the first of each kind only (a flood is one line)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, skip: Skip, topic: str) -> None:
        n = self.counts.get(skip.kind, 0) + 1
        self.counts[skip.kind] = n
        if n == 1:
            _LOGGER.warning("skipped a message on %s: %s (%s); later ones of this kind are only counted "
                            "(metrics: skipped.%s)", topic, KINDS[skip.kind], skip, skip.kind)


def parse_time(value: Any, key: str) -> int:
    """An ISO 8601 UTC time (``…Z`` or with an offset) -> epoch ms."""
    if not isinstance(value, str) or len(value) > 40:
        raise Skip("wrong_type", f"{key} must be an ISO 8601 time, got {type(value).__name__}")
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Skip("wrong_type", f"{key} is not an ISO 8601 time: {value[:40]!r}") from None
    if dt.tzinfo is None:
        raise Skip("wrong_type", f"{key} has no time zone: {value!r}")
    ms = round(dt.timestamp() * 1000)
    if not _MIN_MS <= ms <= _MAX_MS:
        raise Skip("wrong_type", f"{key} is out of range: {value!r}")
    return ms


def _json_object(payload: bytes, limit: int) -> dict[str, Any]:
    if len(payload) > limit:
        raise Skip("oversized", f"{len(payload)} bytes > {limit}")
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Skip("malformed", str(exc)[:80]) from None
    if not isinstance(obj, dict):
        raise Skip("malformed", f"a JSON {type(obj).__name__}")
    return obj


def _string(obj: dict[str, Any], key: str, limit: int, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise Skip("wrong_type", f"{key} must be a string of 1 to {limit} characters")
    return value


def parse_caption(node: str, payload: bytes) -> Caption:
    """A caption event from ``<prefix>/<node>/events`` (the topic names the node).

    Raises:
      Skip: why it is not one.
    """
    obj = _json_object(payload, MAX_CAPTION_BYTES)
    if obj.get("schema") != SCHEMA_VERSION:
        raise Skip("unknown_schema", f"schema {str(obj.get('schema'))[:20]!r}")
    kind = obj.get("type")
    if kind not in ("start", "end"):
        raise Skip("wrong_type", "type must be start or end")
    start = parse_time(obj.get("start"), "start")
    end = parse_time(obj.get("end"), "end") if kind == "end" else None
    if end is not None and end < start:
        raise Skip("wrong_type", "end is before start")
    urgent = obj.get("urgent", False)
    if not isinstance(urgent, bool):
        raise Skip("wrong_type", "urgent must be true or false")
    level = obj.get("level_dbfs")
    if level is not None and (isinstance(level, bool) or not isinstance(level, (int, float)) or not math.isfinite(level)):
        raise Skip("wrong_type", "level_dbfs must be a number or null")
    return Caption(node=node, event_id=_string(obj, "event_id", MAX_ID), label=_string(obj, "label", MAX_LABEL),
                   start_ms=start, end_ms=end, urgent=urgent, level=None if level is None else float(level),
                   model=_string(obj, "model", 200, required=False),
                   caption=_string(obj, "caption", 200, required=False))


def _int(obj: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise Skip("bad_request", f"{key} must be an integer from {lo} to {hi}")
    return value


def parse_request(payload: bytes, now_ms: int, max_answer: int) -> dict[str, Any]:
    """A query: ``{"q": "captions" | "hourly" | "urgent", …}`` -> checked arguments.

    * ``captions``: ``since``, ``until`` (default now), ``nodes``, ``labels``,
      ``limit``, ``before`` (the ``next`` cursor of the previous page).
    * ``hourly``: ``from`` (e.g. the local midnight), ``hours`` (default 24), ``nodes``.
    * ``urgent``: ``since``, ``nodes``, ``limit``, ``before``.

    Raises:
      Skip: kind ``bad_request`` (answered with the reason) or the payload kinds.
    """
    obj = _json_object(payload, MAX_REQUEST_BYTES)
    q = obj.get("q")
    out: dict[str, Any] = {"q": q}
    nodes = obj.get("nodes")
    if nodes is not None:
        if (not isinstance(nodes, list) or len(nodes) > MAX_NODES
                or not all(isinstance(n, str) and _NODE.match(n) for n in nodes)):
            raise Skip("bad_request", f"nodes must be a list of at most {MAX_NODES} node names")
    out["nodes"] = nodes or None
    if q == "hourly":
        try:
            out["from_ms"] = parse_time(obj.get("from"), "from")
        except Skip as exc:
            raise Skip("bad_request", str(exc)) from None
        out["hours"] = _int(obj, "hours", 24, 1, MAX_HOURS)
        return out
    if q not in ("captions", "urgent"):
        raise Skip("bad_request", "q must be captions, hourly or urgent")
    try:
        out["since_ms"] = parse_time(obj.get("since"), "since")
        out["until_ms"] = parse_time(obj["until"], "until") if obj.get("until") is not None else now_ms + 1
        before = obj.get("before")
        if before is not None:
            if (not isinstance(before, list) or len(before) != 2 or isinstance(before[0], bool)
                    or not isinstance(before[0], int) or not isinstance(before[1], str) or len(before[1]) > MAX_ID):
                raise Skip("bad_request", "before must be the next cursor of an earlier answer")
            before = (before[0], before[1])
    except Skip as exc:
        raise Skip("bad_request", str(exc)) from None
    if out["until_ms"] <= out["since_ms"]:
        raise Skip("bad_request", "until must be after since")
    if out["until_ms"] - out["since_ms"] > MAX_RANGE_MS:
        raise Skip("bad_request", "at most 400 days at a time")
    labels = obj.get("labels")
    if labels is not None and (not isinstance(labels, list) or len(labels) > 64
                               or not all(isinstance(x, str) and 0 < len(x) <= MAX_LABEL for x in labels)):
        raise Skip("bad_request", "labels must be a list of class names")
    out["labels"] = labels or None
    asked = _int(obj, "limit", min(200, max_answer), 1, 1 << 31)
    out["limit"] = min(asked, max_answer)  # too much asked: a bounded answer that says so
    out["limited"] = asked > max_answer
    out["before"] = before
    return out
