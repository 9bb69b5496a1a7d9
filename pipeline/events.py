"""Window scores -> caption events: per-class hysteresis, minimum duration, hold.

Each scored window ``i`` is reported at the time span of its newest embedding,
``[t_i, t_i + 0.96 s)`` on the audio clock. Per class:

* **idle -> pending** when the score reaches the *on* threshold; the candidate
  event starts at ``t_i``.
* **pending -> active** once the score stayed at or above the *off* threshold
  for ``min_duration`` seconds (from the candidate start to the end of the
  current embedding): a ``start`` event is emitted, with the candidate start as
  its ``start``. If the score falls below *off* first, the candidate is dropped
  silently (too short to caption).
* **active**: a score below *off* starts the hold; the event ends when the score
  stayed below *off* for ``hold`` seconds. Its ``end`` is the start of the first
  low embedding. A score back at or above *off* during the hold cancels it.

With min duration 1 s and hold 2 s (the window-scoring defaults, embeddings
every 0.96 s) a caption needs two consecutive windows to start and three quiet
ones to end. Times are floats, seconds since the Unix epoch, UTC, from the
audio clock.

The tracker also says which scores it was tuned for (``scoring``: the 10-s
window's clip score, or per-second scores with ``lookahead`` embeddings of
look-ahead, see :mod:`pipeline.chain`; with per-second scoring some classes
may still take the window's score, ``window_classes``: a knock lasts less
than a second and the 10-s window model hears it best; and of those, the
``recent_context`` classes take the higher of that score and the window
model's score of only the last few embeddings, so an alarm need not fill
the window before it is heard). A bundle calibrated on the caption
timeline stores its tracker in ``metadata.json`` (``"tracker"``), and
:func:`make_tracker` builds it from there, letting the configuration override
any value.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from pipeline import params

DEFAULT_CAPTIONS: Mapping[str, str] = {
    "Speech": "[Speech]",
    "Animal": "[Animal sounds]",
    "Music": "[Music]",
    "Vehicle": "[Vehicle]",
}
"""Caption text per class, used when the configuration names none."""

_EPS = 1e-6  # float slack when comparing durations built from 0.96 s steps


@dataclass(frozen=True)
class CaptionEvent:
    """One edge of a caption: ``start`` when a sound begins, ``end`` when it stops.

    Attributes:
      event_id: shared by the ``start`` and ``end`` of the same event.
      type: ``"start"`` or ``"end"``.
      label: the class name, e.g. ``"Music"``.
      caption: the human-readable text, e.g. ``"[Music]"``.
      score: for ``start`` the highest score so far, for ``end`` the event's peak.
      start: event start, UTC epoch seconds (audio clock).
      end: event end for ``end`` events, else ``None``.
      origin: wall-clock time the audio that produced this edge was available
        (used to measure delivery latency; not part of the payload).
      urgent: the class is one people must not miss (an alarm, the door): the
        display and Home Assistant alert for it.
      level_dbfs: the loudest window level (RMS, dBFS) heard while the class
        scored above its off threshold, up to this edge; ``None`` when the
        source has no audio (a replay of embeddings).
    """

    event_id: str
    type: str
    label: str
    caption: str
    score: float
    start: float
    end: float | None
    origin: float = 0.0
    urgent: bool = False
    level_dbfs: float | None = None


SCORING = ("window", "seconds")
"""What the tracker is fed: each window's clip score, or each second's score."""


@dataclass
class _ClassState:
    on: float
    off: float
    caption: str
    min_duration: float
    hold: float
    urgent: bool = False
    level: float | None = None  # loudest level of the pending or open event
    candidate: float | None = None  # start of a pending event
    event_id: str | None = None  # set while active
    start: float = 0.0
    peak: float = 0.0
    below_since: float | None = None


def _new_id() -> str:
    return uuid.uuid4().hex


@dataclass
class EventTracker:
    """Turns a stream of per-window class scores into caption events.

    Args:
      classes: class names in score order.
      on_thresholds: class -> on threshold in [0, 1].
      off_thresholds: class -> off threshold (``<= on``); a missing class gets
        ``on * EVENT_OFF_RATIO``.
      captions: class -> caption text; a missing class gets
        :data:`DEFAULT_CAPTIONS` or ``[<class>]``.
      urgent: class -> whether its captions are urgent (default: none is).
      min_duration: seconds above *off* before an event is published (one
        value, or class -> value; a missing class gets the default).
      hold: seconds below *off* before an event ends (likewise).
      new_id: makes event ids (default: random UUID4 hex).
      scoring: the scores this tracker is tuned for (:data:`SCORING`); the
        caption chain scores accordingly.
      lookahead: with ``"seconds"``, embeddings of look-ahead per score.
      window_classes: with ``"seconds"``, classes whose score is nevertheless
        the 10-s window's score (the window ending ``lookahead`` embeddings
        after the second being judged).
      recent_context: window class -> ``k`` (1 to 9): its score is the higher
        of the window's score and the window model's score of the window's
        last ``k`` embeddings alone (repeated to fill 10). A sound that has
        just begun fills those ``k`` seconds before it fills the window.

    Raises:
      ValueError: for a threshold outside [0, 1], off above on, negative times,
        or a class without an on threshold.
    """

    classes: Sequence[str]
    on_thresholds: Mapping[str, float]
    off_thresholds: Mapping[str, float] | None = None
    captions: Mapping[str, str] | None = None
    min_duration: float | Mapping[str, float] = params.EVENT_MIN_DURATION_SECONDS
    hold: float | Mapping[str, float] = params.EVENT_HOLD_SECONDS
    new_id: Callable[[], str] = _new_id
    scoring: str = "window"
    lookahead: int = 0
    urgent: Mapping[str, bool] | None = None
    window_classes: Sequence[str] = ()
    recent_context: Mapping[str, int] | None = None
    _states: dict[str, _ClassState] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.classes = tuple(self.classes)
        if self.scoring not in SCORING:
            raise ValueError(f"scoring must be one of {SCORING}; got {self.scoring!r}")
        if not 0 <= int(self.lookahead) < params.WINDOW_EMBEDDINGS:
            raise ValueError(f"lookahead must be 0 to {params.WINDOW_EMBEDDINGS - 1} embeddings; got {self.lookahead}")
        mins = _per_class(self.min_duration, self.classes, params.EVENT_MIN_DURATION_SECONDS)
        holds = _per_class(self.hold, self.classes, params.EVENT_HOLD_SECONDS)
        for name in self.classes:
            if not (mins[name] >= 0 and holds[name] >= 0):
                raise ValueError(
                    f"class {name!r}: min_duration and hold must be >= 0 seconds; got {mins[name]} and {holds[name]}"
                )
        offs = dict(self.off_thresholds or {})
        caps = dict(self.captions or {})
        urgent = dict(self.urgent or {})
        unknown = sorted(set(urgent) - set(self.classes))
        if unknown:
            raise ValueError(f"urgent flags for unknown classes {unknown}; the classes are {list(self.classes)}")
        unknown = sorted(set(self.window_classes) - set(self.classes))
        if unknown:
            raise ValueError(f"window_classes has unknown classes {unknown}; the classes are {list(self.classes)}")
        wanted = set(self.window_classes)
        self.window_classes = tuple(c for c in self.classes if c in wanted)  # in score order
        recent = dict(self.recent_context or {})
        stray = sorted(set(recent) - set(self.window_classes))
        if stray:
            raise ValueError(f"recent_context names {stray}, which are not window classes "
                             f"(window_classes: {list(self.window_classes)})")
        for name, k in recent.items():
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k < params.WINDOW_EMBEDDINGS:
                raise ValueError(f"recent_context of {name!r} must be a whole number of embeddings from 1 to "
                                 f"{params.WINDOW_EMBEDDINGS - 1}; got {k}")
        self.recent_context = {c: int(recent[c]) for c in self.window_classes if c in recent}
        self._states = {}
        for name in self.classes:
            if name not in self.on_thresholds:
                raise ValueError(f"no on threshold for class {name!r}")
            on = float(self.on_thresholds[name])
            off = float(offs.get(name, on * params.EVENT_OFF_RATIO))
            if not (0.0 <= off <= on <= 1.0):
                raise ValueError(
                    f"class {name!r}: thresholds must satisfy 0 <= off <= on <= 1; got on={on}, off={off}"
                )
            caption = caps.get(name) or DEFAULT_CAPTIONS.get(name) or f"[{name}]"
            self._states[name] = _ClassState(on=on, off=off, caption=caption, min_duration=mins[name],
                                             hold=holds[name], urgent=bool(urgent.get(name, False)))

    @property
    def active(self) -> dict[str, bool]:
        """Class -> whether a published event is open (the ``state`` topic)."""
        return {name: st.event_id is not None for name, st in self._states.items()}

    def caption_texts(self) -> dict[str, str]:
        """Class -> caption text in effect."""
        return {name: st.caption for name, st in self._states.items()}

    def urgent_classes(self) -> tuple[str, ...]:
        """The classes whose captions are urgent, in class order."""
        return tuple(name for name, st in self._states.items() if st.urgent)

    def thresholds(self) -> dict[str, tuple[float, float]]:
        """Class -> ``(on, off)`` in effect."""
        return {name: (st.on, st.off) for name, st in self._states.items()}

    def timings(self) -> dict[str, tuple[float, float]]:
        """Class -> ``(min_duration, hold)`` in effect, seconds."""
        return {name: (st.min_duration, st.hold) for name, st in self._states.items()}

    def update(
        self,
        t_start: float,
        t_end: float,
        scores: npt.ArrayLike,
        origin: float = 0.0,
        level_dbfs: float | None = None,
    ) -> list[CaptionEvent]:
        """Feeds the scores of one window.

        Args:
          t_start: start of the window's newest embedding (UTC epoch seconds).
          t_end: its end (``t_start + 0.96``).
          scores: float ``[len(classes)]`` in [0, 1].
          origin: wall-clock time the audio behind this window was available.
          level_dbfs: the level of the audio these scores describe (RMS,
            dBFS), or ``None`` without audio; events carry their loudest.

        Returns:
          The events this window caused (possibly none), in class order.
        """
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        if s.shape[0] != len(self.classes):
            raise ValueError(f"expected {len(self.classes)} scores; got {s.shape[0]}")
        out: list[CaptionEvent] = []
        for name, score in zip(self.classes, s):
            score = 0.0 if math.isnan(score) else float(score)
            st = self._states[name]
            if st.event_id is None and st.candidate is None:
                if score >= st.on:
                    st.candidate, st.peak, st.level = t_start, score, level_dbfs
            elif st.event_id is None:
                if score >= st.off:
                    st.peak = max(st.peak, score)
                    st.level = _louder(st.level, level_dbfs)
                else:
                    st.candidate, st.level = None, None
            if st.event_id is None and st.candidate is not None:
                if t_end - st.candidate >= st.min_duration - _EPS:
                    st.event_id, st.start, st.candidate, st.below_since = self.new_id(), st.candidate, None, None
                    out.append(CaptionEvent(st.event_id, "start", name, st.caption, st.peak, st.start, None, origin,
                                            st.urgent, st.level))
                continue
            if st.event_id is not None:
                if score >= st.off:
                    st.below_since = None
                    st.peak = max(st.peak, score)
                    st.level = _louder(st.level, level_dbfs)
                else:
                    if st.below_since is None:
                        st.below_since = t_start
                    if t_end - st.below_since >= st.hold - _EPS:
                        out.append(self._close(name, st.below_since, origin))
        return out

    def finish(self, t: float, origin: float = 0.0) -> list[CaptionEvent]:
        """Ends the stream: closes open events, drops pending candidates.

        Args:
          t: end of the last audio processed (UTC epoch seconds); an event in its
            hold ends where the hold began instead.
          origin: wall-clock time for latency accounting.

        Returns:
          The ``end`` events, in class order.
        """
        out = []
        for name, st in self._states.items():
            st.candidate = None
            if st.event_id is not None:
                out.append(self._close(name, st.below_since if st.below_since is not None else t, origin))
        return out

    def _close(self, name: str, end: float, origin: float) -> CaptionEvent:
        st = self._states[name]
        ev = CaptionEvent(st.event_id or "", "end", name, st.caption, st.peak, st.start, max(end, st.start), origin,
                          st.urgent, st.level)
        st.event_id, st.below_since, st.candidate, st.peak, st.level = None, None, None, 0.0, None
        return ev


def _louder(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else max(a, b)


def _per_class(value: float | Mapping[str, float], classes: Sequence[str], default: float) -> dict[str, float]:
    if isinstance(value, Mapping):
        return {c: float(value.get(c, default)) for c in classes}
    return {c: float(value) for c in classes}


def make_tracker(
    classifier: Any,
    scoring: str = "auto",
    lookahead_s: float | None = None,
    on_thresholds: Mapping[str, float] | None = None,
    off_thresholds: Mapping[str, float] | None = None,
    off_ratio: float | None = None,
    min_duration_s: float | None = None,
    hold_s: float | None = None,
    captions: Mapping[str, str] | None = None,
    window_classes: Sequence[str] | None = None,
    recent_context: Mapping[str, int] | None = None,
) -> EventTracker:
    """The event tracker for a loaded classifier bundle, with optional overrides.

    Defaults come from the bundle: its calibrated ``"tracker"`` block (per-class
    on/off thresholds, minimum duration and hold, look-ahead, calibrated on the
    caption timeline) when it scores per second, else its clip thresholds with
    the window defaults of :mod:`pipeline.params`. Every argument that is not
    ``None`` overrides.

    Args:
      classifier: has ``classes``, ``thresholds``, ``metadata`` and ``has_seconds``.
      scoring: ``"auto"`` (per second when the bundle has a calibrated
        per-second tracker), ``"seconds"`` or ``"window"``.
      lookahead_s: per-second look-ahead, seconds (rounded to whole embeddings).
      on_thresholds, off_thresholds: class -> threshold.
      off_ratio: off = on x this, for classes without an off threshold.
      min_duration_s, hold_s: seconds, for every class.
      captions: class -> caption text (default: the bundle's, see
        ``Classifier.captions``). Urgent flags always come from the bundle.
      window_classes: per-second scoring: classes scored by the 10-s window
        model instead (default: the calibrated tracker's ``window_classes``).
      recent_context: window class -> embeddings of recent context (default:
        the calibrated tracker's, for the window classes chosen).

    Raises:
      ValueError: per-second scoring asked of a bundle without a per-second
        model, or values the tracker refuses.
    """
    if scoring not in ("auto", *SCORING):
        raise ValueError(f"scoring must be auto, window or seconds; got {scoring!r}")
    classes = tuple(classifier.classes)
    has_seconds = bool(getattr(classifier, "has_seconds", False))
    meta = dict((getattr(classifier, "metadata", None) or {}).get("tracker") or {})
    if scoring == "auto":
        scoring = "seconds" if has_seconds and meta.get("scoring") == "seconds" else "window"
    if scoring == "seconds" and not has_seconds:
        raise ValueError(f"scoring = \"seconds\" needs a bundle with a per-second model; "
                         f"{getattr(classifier, 'name', 'this bundle')} has none (use \"window\")")
    calibrated = meta if meta.get("scoring") == scoring else {}
    bundle_on = dict(getattr(classifier, "thresholds", {}) or {})
    cal_on = dict(calibrated.get("on") or {})
    cal_off = dict(calibrated.get("off") or {})
    on = {c: float((on_thresholds or {}).get(c, cal_on.get(c, bundle_on.get(c, params.DEFAULT_THRESHOLD))))
          for c in classes}
    off = {}
    for c in classes:
        if off_thresholds and c in off_thresholds:
            off[c] = float(off_thresholds[c])
        elif off_ratio is not None:
            off[c] = on[c] * off_ratio
        elif c in cal_off and c in cal_on and cal_on[c] > 0:
            off[c] = on[c] * min(1.0, float(cal_off[c]) / float(cal_on[c]))
        else:
            off[c] = on[c] * params.EVENT_OFF_RATIO
    min_duration: float | dict[str, float] = (
        min_duration_s if min_duration_s is not None
        else dict(calibrated.get("min_duration_s") or {}) or params.EVENT_MIN_DURATION_SECONDS
    )
    hold: float | dict[str, float] = (
        hold_s if hold_s is not None else dict(calibrated.get("hold_s") or {}) or params.EVENT_HOLD_SECONDS
    )
    if lookahead_s is not None:
        lookahead = int(round(lookahead_s / params.EMBEDDING_SECONDS))
    else:
        lookahead = int(calibrated.get("lookahead", params.EVENT_LOOKAHEAD_EMBEDDINGS))
    texts = {**dict(getattr(classifier, "captions", None) or {}), **dict(captions or {})}
    urgent = {c: bool(u) for c, u in dict(getattr(classifier, "urgent", None) or {}).items() if c in classes}
    if window_classes is None:
        window_classes = [c for c in calibrated.get("window_classes") or () if c in classes]
    per_second = scoring == "seconds"
    if recent_context is None:
        # Values as the bundle has them: the tracker checks them and names a bad one.
        recent_context = {c: k for c, k in dict(calibrated.get("recent_context") or {}).items()
                          if c in window_classes}
    return EventTracker(classes, on, off, texts, min_duration, hold, scoring=scoring,
                        lookahead=lookahead if per_second else 0, urgent=urgent,
                        window_classes=tuple(window_classes) if per_second else (),
                        recent_context=dict(recent_context) if per_second else {})
