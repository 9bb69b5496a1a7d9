"""The caption timeline: how well captions follow the sound in time.

A person reading captions on a wall cares whether "[Music]" appears when the
music starts and goes when it stops. This module measures exactly that, on
streams of scenes (:mod:`train.scenes`) built from the *validation* side of the
grouped ``bal_train`` split, by running the daemon's own
:class:`pipeline.chain.CaptionChain` and event tracker over them.

Scores (all on the 0.96-s embedding grid, ground truth = each clip's labels on
each of its embeddings):

* **segment F1**, micro over the classes and per class: an embedding is
  captioned for a class when a caption of that class covers more than half of it;
* per **ground-truth event** (a maximal run of embeddings carrying the class):
  missed (no caption of the class overlaps it) or not; **start delay**
  (first overlapping caption's start - sound start) and **end delay** (last
  overlapping caption's end - sound end), p50 and p90;
* **false-alarm captions**: captions that overlap no ground truth of their
  class at all, as a count and a share of all captions;
* for the daemon, when a caption is **shown** and **gone** on a display: the
  audio time at which its ``start`` (``end``) event is published, minus the
  sound's start (end). This adds the look-ahead and the minimum duration (or
  hold) to the delays above: it is the latency a reader sees, less the
  milliseconds of computation and delivery.

Baselines, in the same run: the classifier's clip score on each whole clip,
exactly aligned (``clip_aligned``: what a perfect clip segmentation would give),
each second scored alone (``second_alone``: a window of that embedding x 10),
and the daemon as it captioned before per-second scoring (``window``: the 10-s
rolling window score with the old tracker defaults).

The validation side is halved by video for honesty: the tracker is calibrated
on streams of one half (``calibration``) and reported on the other
(``report``), whose clips neither the model nor the tracker was tuned on.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from pipeline import params
from pipeline.chain import CaptionChain, WindowScores
from pipeline.events import CaptionEvent, EventTracker, make_tracker
from train import scenes
from train.evaluate import BOOTSTRAP_DRAWS, INTERVAL_LEVEL, central_interval

_LOGGER = logging.getLogger(__name__)

STEP = params.EMBEDDING_SECONDS
T0 = 1_800_000_000.0
"""Audio-clock time of a timeline's first embedding (any value; times are relative)."""
HALF_SALT = "audiocap-timeline"
"""Salt of the hash that halves the validation videos into calibration / report."""
HALVES = ("report", "calibration", "all")
PNG_SECONDS = 240.0
"""Length of the stream excerpt drawn in the timeline picture."""

# The calibration grid (per class; each class's tracker is independent of the others).
GRID_OFF_RATIOS = (0.5, 0.65, 0.8, 1.0)
GRID_MIN_EMBEDDINGS = (1, 2, 3)
"""Minimum caption durations tried, in embeddings (1 = a single second starts a caption). A
caption is published (min + look-ahead) x 0.96 s after the sound that starts it, so this
bounds how late it appears: longer minimums cut a few false alarms but keep a reader
waiting (measured on the calibration streams: 4-6 gained < 0.01 F1)."""
GRID_HOLD_EMBEDDINGS = (1, 2, 3)
"""Holds tried, in embeddings (1 = the first quiet second ends a caption). A caption's
``end`` is published (hold + look-ahead) x 0.96 s after the sound stops, so this bounds
how long a reader still sees a caption of a sound that is gone."""
GRID_ON_QUANTILES = 14
MAX_FALSE_ALARMS: float | None = None
"""Default of ``calibrate(max_false_alarms=...)``: no cap, the best micro F1 wins (see docs/timeline.md
for the trade-off measured with a cap)."""
TARGET_END_DELAY_P90 = 3.0
URGENT_MAX_FALSE_ALARMS_PER_HOUR = 2.0
"""Calibration of an urgent class (it flashes the display and may wake a phone): its best F1
among settings with at most this many false-alarm captions per hour of the calibration
streams, which are sound from end to end (a home is quieter)."""
URGENT_ON_QUANTILES = np.linspace(0.5, 0.999, 40)
"""On thresholds tried for an urgent class: rare sounds need thresholds above the 98th percentile."""
SOURCES = ("seconds", "window")
"""Where a class's per-second score comes from: the per-second model, or the 10-s window model."""
RECENT_CONTEXTS = (2, 3, 4)
"""Urgent classes also try the window score raised to that of the window's last k embeddings alone
(source ``"window+recentK"``, the tracker's ``recent_context``): an alarm is heard as soon as it fills
k seconds instead of the window."""


@dataclass(frozen=True)
class Caption:
    """One caption on the embedding grid: class index, start and end in embeddings from the stream start."""

    cls: int
    start: float
    end: float
    score: float = 0.0
    shown: float | None = None
    """When the caption's ``start`` was published, on the same grid (audio clock)."""
    gone: float | None = None
    """When its ``end`` was published."""


# --- streams --------------------------------------------------------------------------

def timeline_clips(data: Any, class_map: Any, val_fraction: float = 0.2, half: str = "report") -> Any:
    """The validation-side clips of the grouped split (or one half of them, by video).

    Returns:
      ``(clips, y)``: :class:`train.data.Clips` (short clips padded, real
      lengths in ``frames``) and their uint8 ``[N, C]`` class targets.
    """
    from train import data as data_mod

    if half not in HALVES:
        raise ValueError(f"half must be one of {HALVES}; got {half!r}")
    clips, _ = data_mod.load_clips(data, short="pad", num_labels=params.AUDIOSET_NUM_LABELS, only_val=val_fraction)
    if half != "all":
        calib = data_mod.validation_mask(clips.video_id, 0.5, salt=HALF_SALT)
        clips = clips.subset(np.flatnonzero(calib if half == "calibration" else ~calib))
    if len(clips) == 0:
        raise ValueError(f"no validation clips in {data}")
    return clips, clips.targets(class_map)


def make_stream(clips: Any, y: npt.NDArray, seed: int = 0, max_scenes: int | None = None,
                exhaust: bool | None = None, mixed: bool | None = None) -> scenes.Stream:
    """A timeline stream of these clips, each played at most once.

    With the four default classes the stream ends when one kind of scene runs
    out (every kind equally likely throughout), and clips with several of the
    classes are left out. A larger class set has rare classes (a knock, a
    baby) that mostly come with other sounds, so by default (``None``) its
    streams are *mixed* (such clips join the scenes of their rarest class,
    see :func:`train.scenes.clip_kinds`) and go on when a kind runs out,
    until one kind is left (``exhaust``).
    """
    many = scenes.is_large_class_set(np.asarray(y).shape[1])
    exhaust = many if exhaust is None else exhaust
    mixed = many if mixed is None else mixed
    return scenes.build_stream(clips.x, clips.frames, y, np.random.default_rng(seed), max_scenes=max_scenes,
                               exhaust=exhaust, mixed=mixed)


def clip_runs(stream: scenes.Stream) -> list[tuple[int, int]]:
    """``(first, end)`` embedding indices of each clip appearance, in order."""
    edges = np.flatnonzero(np.r_[True, stream.clip[1:] != stream.clip[:-1], True])
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


# --- running the daemon's chain -------------------------------------------------------

def run_chain(classifier: Any, tracker: EventTracker, stream: scenes.Stream) -> tuple[list[Caption], npt.NDArray[np.float32]]:
    """Feeds a stream clip by clip (as the replay source does) through the caption chain.

    Returns:
      ``(captions, scores)``: the captions on the embedding grid, and float32
      ``[T, C]`` the score the tracker saw for each embedding.
    """
    chain = CaptionChain(classifier, tracker)
    outputs: list[Any] = []
    # One embedding at a time, handed over when its 0.96 s of sound is complete
    # (as the paced replay and the microphone deliver): the events' ``origin``
    # then says when a caption edge would reach a display, in audio time.
    for i in range(len(stream)):
        outputs += chain.feed_embeddings(stream.embeddings[i : i + 1], T0 + i * STEP, T0 + (i + 1) * STEP, stream=0)
    outputs += chain.end_stream(T0 + len(stream) * STEP)
    return captions_from_events(outputs, tracker.classes), _scores_of(outputs, len(stream), len(tracker.classes))


def _scores_of(outputs: Iterable[Any], n: int, c: int) -> npt.NDArray[np.float32]:
    scores = np.full((n, c), np.nan, np.float32)
    for o in outputs:
        if isinstance(o, WindowScores):
            scores[o.index] = o.scores
    return scores


def captions_from_events(events: Iterable[Any], classes: Sequence[str]) -> list[Caption]:
    """Pairs ``start`` and ``end`` events into captions on the embedding grid (other outputs are ignored)."""
    out = []
    shown: dict[str, float] = {}
    for ev in events:
        if not isinstance(ev, CaptionEvent):
            continue
        if ev.type == "start":
            shown[ev.event_id] = ev.origin
        elif ev.end is not None:
            t_shown = shown.pop(ev.event_id, None)
            out.append(Caption(classes.index(ev.label), (ev.start - T0) / STEP, (ev.end - T0) / STEP, ev.score,
                               None if t_shown is None else (t_shown - T0) / STEP, (ev.origin - T0) / STEP))
    return out


def captions_from_decisions(active: npt.NDArray[np.bool_], score: npt.NDArray | None = None) -> list[Caption]:
    """A caption per maximal run of active embeddings, per class (for the baselines)."""
    out = []
    for c in range(active.shape[1]):
        for a, b in _runs(active[:, c]):
            out.append(Caption(c, float(a), float(b), float(score[a:b, c].max()) if score is not None else 0.0))
    return out


def _runs(x: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    d = np.diff(np.r_[0, x.astype(np.int8), 0])
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


# --- scoring --------------------------------------------------------------------------

def captioned_grid(captions: Iterable[Caption], n: int, c: int) -> npt.NDArray[np.bool_]:
    """bool ``[n, c]``: embeddings a caption covers for more than half."""
    cover = np.zeros((n, c), np.float64)
    for cap in captions:
        a, b = max(cap.start, 0.0), min(cap.end, float(n))
        if b <= a:
            continue
        i0, i1 = int(np.floor(a)), int(np.ceil(b))
        for i in range(i0, i1):
            cover[i, cap.cls] += min(b, i + 1) - max(a, i)
    return cover > 0.5


def _pct(x: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(x, q)), 3) if len(x) else None


SHOWN_WITHIN_S = 2.0
"""An urgent caption (an alarm) must be on the wall this soon after its sound starts."""


def _false_alarm(truth: npt.NDArray[np.bool_], cp: Caption) -> bool:
    """A caption that overlaps no ground truth of its class at all."""
    return not truth[max(int(np.floor(cp.start)), 0):int(np.ceil(cp.end)), cp.cls].any()


def score_timeline(truth: npt.NDArray, captions: Sequence[Caption], classes: Sequence[str]) -> dict[str, Any]:
    """Segment F1, event delays, misses and false alarms of captions against the ground truth.

    Args:
      truth: ``[T, C]`` 0/1 per embedding.
      captions: captions on the embedding grid.
      classes: class names.

    Returns:
      A JSON-ready dict (delays in seconds).
    """
    t = np.asarray(truth) > 0
    n, c = t.shape
    pred = captioned_grid(captions, n, c)
    hours = n * STEP / 3600.0
    tp, fp, fn = (pred & t).sum(0), (pred & ~t).sum(0), (~pred & t).sum(0)

    def f1(a: float, b: float, d: float) -> float | None:
        return round(float(2 * a / (2 * a + b + d)), 4) if (2 * a + b + d) else None

    per_class: dict[str, Any] = {}
    starts_all, ends_all, missed_all, events_all, fa_all = [], [], 0, 0, 0
    shown_all: list[float] = []
    gone_all: list[float] = []
    for k, name in enumerate(classes):
        caps = [cp for cp in captions if cp.cls == k]
        starts, ends, missed, shown = [], [], 0, []
        gt = _runs(t[:, k])
        for a, b in gt:
            over = [cp for cp in caps if cp.start < b and cp.end > a]
            if not over:
                missed += 1
                continue
            first, last = min(over, key=lambda cp: cp.start), max(over, key=lambda cp: cp.end)
            starts.append((first.start - a) * STEP)
            ends.append((last.end - b) * STEP)
            if first.shown is not None and last.gone is not None:
                shown.append((first.shown - a) * STEP)
                shown_all.append(shown[-1])
                gone_all.append((last.gone - b) * STEP)
        fa = sum(1 for cp in caps if _false_alarm(t, cp))
        per_class[name] = {
            "segment_f1": f1(tp[k], fp[k], fn[k]),
            "events": len(gt), "missed": missed,
            "start_delay_p50": _pct(starts, 50), "start_delay_p90": _pct(starts, 90),
            "end_delay_p50": _pct(ends, 50), "end_delay_p90": _pct(ends, 90),
            "captions": len(caps), "false_alarms": fa,
            "false_alarm_share": round(fa / len(caps), 4) if caps else None,
            "false_alarms_per_hour": round(fa / hours, 2) if hours else None,
        }
        if shown:
            per_class[name].update({
                "shown_after_sound_start_p50": _pct(shown, 50), "shown_after_sound_start_p90": _pct(shown, 90),
                # Missed events count as not shown in time.
                f"shown_within_{SHOWN_WITHIN_S:g}s": round(sum(d <= SHOWN_WITHIN_S + 1e-6 for d in shown) / len(gt), 4),
            })
        starts_all += starts
        ends_all += ends
        missed_all += missed
        events_all += len(gt)
        fa_all += fa
    return {
        "segment_f1": f1(tp.sum(), fp.sum(), fn.sum()),
        "segment_precision": round(float(tp.sum() / max(tp.sum() + fp.sum(), 1)), 4),
        "segment_recall": round(float(tp.sum() / max(tp.sum() + fn.sum(), 1)), 4),
        "events": events_all,
        "missed": missed_all,
        "start_delay_p50": _pct(starts_all, 50), "start_delay_p90": _pct(starts_all, 90),
        "end_delay_p50": _pct(ends_all, 50), "end_delay_p90": _pct(ends_all, 90),
        "captions": len(captions),
        "shown_after_sound_start_p50": _pct(shown_all, 50), "shown_after_sound_start_p90": _pct(shown_all, 90),
        "gone_after_sound_end_p50": _pct(gone_all, 50), "gone_after_sound_end_p90": _pct(gone_all, 90),
        "false_alarms": fa_all,
        "false_alarm_share": round(fa_all / len(captions), 4) if captions else None,
        "per_class": per_class,
    }


def scene_intervals(truth: npt.NDArray, captions: Sequence[Caption], scene: npt.NDArray,
                    draws: int = BOOTSTRAP_DRAWS, level: float = INTERVAL_LEVEL, seed: int = 0) -> dict[str, Any]:
    """How sure a timeline's segment F1 and false-alarm share are: a bootstrap over its scenes.

    The stream's scenes are drawn with replacement ``draws`` times; each draw
    sums the drawn scenes' segment counts (micro over the classes) and their
    captions (a caption belongs to the scene it starts in). A stream of a few
    hundred scenes gives an F1 that another stream of the same clips would
    move by a few hundredths: this says by how much.

    Returns:
      ``{"level", "method", "segment_f1": [low, high], "false_alarm_share": [low, high]}``.
    """
    t = np.asarray(truth) > 0
    n, c = t.shape
    pred = captioned_grid(captions, n, c)
    sc = np.asarray(scene, np.int64)
    ns = int(sc.max()) + 1 if len(sc) else 0
    counts = np.zeros((ns, 5), np.float64)  # tp fp fn captions false alarms, per scene
    for col, m in enumerate(((pred & t).sum(1), (pred & ~t).sum(1), (~pred & t).sum(1))):
        np.add.at(counts[:, col], sc, m)
    for cp in captions:
        a = min(max(int(np.floor(cp.start)), 0), n - 1)
        counts[sc[a], 3] += 1
        counts[sc[a], 4] += _false_alarm(t, cp)
    rng = np.random.default_rng(seed)
    tot = np.stack([counts[rng.integers(0, ns, ns)].sum(0) for _ in range(draws)]) if ns else np.zeros((1, 5))
    f1 = 2 * tot[:, 0] / np.maximum(2 * tot[:, 0] + tot[:, 1] + tot[:, 2], 1)
    share = tot[:, 4] / np.maximum(tot[:, 3], 1)
    return {"level": level, "method": f"bootstrap over the stream's {ns} scenes ({draws} draws)",
            "segment_f1": list(central_interval(f1, level)),
            "false_alarm_share": list(central_interval(share, level))}


# --- baselines --------------------------------------------------------------------------

def clip_aligned(classifier: Any, clips: Any, stream: scenes.Stream) -> tuple[list[Caption], npt.NDArray]:
    """Each clip scored once with the clip classifier, exactly aligned with the clip."""
    runs = clip_runs(stream)
    order = stream.clip[[a for a, _ in runs]]
    from pipeline.window import fill_window

    wins = np.stack([fill_window(clips.x[i, : max(int(clips.frames[i]), 1)]) for i in order])
    s = np.concatenate([classifier.predict(wins[j : j + 2048]) for j in range(0, len(wins), 2048)])
    scores = np.repeat(s, [b - a for a, b in runs], axis=0)
    thr = np.array([classifier.thresholds[c] for c in classifier.classes])
    return captions_from_decisions(scores >= thr, scores), scores


def second_alone(classifier: Any, stream: scenes.Stream) -> tuple[list[Caption], npt.NDArray]:
    """Each embedding scored alone: the clip classifier on a window of that embedding x 10."""
    wins = np.repeat(stream.embeddings[:, None], params.WINDOW_EMBEDDINGS, axis=1)
    s = np.concatenate([classifier.predict(wins[j : j + 2048]) for j in range(0, len(wins), 2048)])
    thr = np.array([classifier.thresholds[c] for c in classifier.classes])
    return captions_from_decisions(s >= thr, s), s


def window_tracker(classifier: Any) -> EventTracker:
    """The daemon's tracker before per-second captions: window scores, clip thresholds, old timings."""
    return make_tracker(classifier, scoring="window", off_ratio=params.EVENT_OFF_RATIO,
                        min_duration_s=params.EVENT_MIN_DURATION_SECONDS, hold_s=params.EVENT_HOLD_SECONDS)


# --- calibration ----------------------------------------------------------------------

def simulate_tracker(scores: Sequence[float], on: float, off: float, min_n: int, hold_n: int) -> list[tuple[int, int]]:
    """One class's captions ``(start, end)`` in embeddings, for the calibration search.

    The same state machine as :class:`pipeline.events.EventTracker` (tested to
    give the same captions), on plain floats with timings in whole embeddings,
    so the grid search runs in seconds rather than minutes.
    """
    out: list[tuple[int, int]] = []
    cand = -1  # start of a pending caption
    start = -1  # start of the open caption
    below = -1  # first low embedding while open
    for i, x in enumerate(scores):
        if start < 0:
            if cand < 0:
                if x >= on:
                    cand = i
            elif x < off:
                cand = -1
            if cand >= 0 and i + 1 - cand >= min_n:
                start, cand, below = cand, -1, -1
            continue
        if x >= off:
            below = -1
        else:
            if below < 0:
                below = i
            if i + 1 - below >= hold_n:
                out.append((start, below))
                start, below = -1, -1
    if start >= 0:
        out.append((start, below if below >= 0 else len(scores)))
    return out


def _class_counts(truth: npt.NDArray[np.bool_], caps: list[tuple[int, int]]) -> tuple[int, int, int, int, int, float]:
    """One class's ``(tp, fp, fn, captions, false alarms, end delay p90)`` on the grid."""
    pred = np.zeros(truth.shape[0] + 1, np.int32)
    for a, b in caps:
        pred[a] += 1
        pred[b] -= 1
    p = np.cumsum(pred)[:-1] > 0
    tp, fp, fn = int((p & truth).sum()), int((p & ~truth).sum()), int((~p & truth).sum())
    csum = np.r_[0, np.cumsum(truth)]
    fa = sum(1 for a, b in caps if csum[b] - csum[a] == 0)
    ends = []
    if caps:
        cs = np.array(caps)
        for a, b in _runs(truth):
            over = cs[(cs[:, 0] < b) & (cs[:, 1] > a)]
            if len(over):
                ends.append((over[:, 1].max() - b) * STEP)
    return tp, fp, fn, len(caps), fa, (float(np.percentile(ends, 90)) if ends else 0.0)


NEVER_ON = 1.0
"""The on threshold of a class the calibration turns off (scores reach 1.0 only when saturated)."""


def calibrate(
    scores: npt.NDArray, truth: npt.NDArray, classes: Sequence[str], max_false_alarms: float | None = MAX_FALSE_ALARMS,
    urgent: Sequence[str] = (), window_scores: npt.NDArray | None = None,
    urgent_max_false_alarms_per_hour: float = URGENT_MAX_FALSE_ALARMS_PER_HOUR,
    allow_off: bool = False, recent_scores: Mapping[int, npt.NDArray] | None = None,
    max_end_delay_p90: float | None = TARGET_END_DELAY_P90,
    end_delay_on: tuple[npt.NDArray, npt.NDArray] | None = None,
) -> dict[str, Any]:
    """Per-class tracker settings that maximise the micro segment F1 of a timeline.

    Every class is tried on a grid of on thresholds (quantiles of its scores;
    with ``allow_off`` also :data:`NEVER_ON`, which turns a class off: no
    class is silenced by default, since a person chose the bundle for them),
    off/on ratios, minimum durations and holds. Settings whose end-delay p90
    exceeds :data:`TARGET_END_DELAY_P90` are left out. The classes' choices are
    then made together: for a price ``lam`` on false alarms, each class takes
    the setting with the best ``F1_c - lam * false_alarm_share_c``; of the
    combinations whose false-alarm share is within ``max_false_alarms`` the
    best micro F1 wins (if none is, the lowest share).

    Args:
      scores: float ``[T, C]`` the per-second scores the tracker will see.
      truth: ``[T, C]`` 0/1.
      max_false_alarms: cap on the share of captions that are false alarms
        (``None``: no cap).
      urgent: classes that must reach the wall at once (an alarm): their
        minimum duration is one embedding, so a caption is published as soon
        as its first second (and the look-ahead) has been heard. They are
        never turned off and are chosen alone, outside the micro F1: the
        best F1 of the class among settings with at most
        ``urgent_max_false_alarms_per_hour`` false alarms per hour (if none
        has, the fewest false alarms), with a finer grid of high thresholds.
        An alert stays on the display until acknowledged, so their end delay
        is not bounded.
      window_scores: float ``[T, C]``, the same stream scored by the 10-s window
        model as the chain gives it to ``window_classes``; with it, every
        class also tries that source (its captions lag the sound's end, so
        the end-delay bound mostly keeps the main classes per second).
      recent_scores: k -> float ``[T, C]``, the window scores raised to the
        window model's score of the last k embeddings alone, as the chain
        gives them to ``recent_context`` classes; urgent classes also try
        these sources (``"window+recentK"``).
      max_end_delay_p90: the end-delay bound (``None``: none). Strong labels
        cut a talk into many short events a second apart, and a caption that
        spans them "ends late" for all but the last: there the segment
        scores judge the overhang instead.
      end_delay_on: ``(scores, truth)`` of other streams (the curated ones,
        whose events are whole sounds) on which the end-delay bound is
        measured instead, with the same settings.

    Returns:
      ``{"on", "off", "min_duration_s", "hold_s", "source"}``, each class ->
      value, ``"per_class"`` with the chosen settings' figures, and
      ``"timeline"``, the combination's micro F1 and false-alarm share.
    """
    t = np.asarray(truth) > 0
    hours = t.shape[0] * STEP / 3600.0
    table: list[list[tuple]] = []  # per class: (setting, counts, source)
    urgent_pick: dict[int, int] = {}
    for k in range(len(classes)):
        is_urgent = classes[k] in urgent
        sources = [("seconds", scores)] + ([("window", window_scores)] if window_scores is not None else [])
        if is_urgent:
            sources += [(f"window+recent{ctx}", sc) for ctx, sc in sorted((recent_scores or {}).items())]
        rows = []
        bound_values = (np.nan_to_num(np.asarray(end_delay_on[0])[:, k].astype(np.float64)).tolist()
                        if end_delay_on is not None else None)
        bound_truth = np.asarray(end_delay_on[1]) > 0 if end_delay_on is not None else None
        for source, sc in sources:
            s = np.nan_to_num(sc[:, k].astype(np.float64))
            values = s.tolist()
            qs = np.unique(np.round(np.quantile(s, URGENT_ON_QUANTILES if is_urgent
                                                else np.linspace(0.5, 0.98, GRID_ON_QUANTILES)), 3))
            # "Never caption it" (only on request): for a class the model cannot place on the timeline, silence
            # may beat a flood of false alarms. Never for an urgent class.
            if allow_off and not is_urgent:
                qs = np.unique(np.r_[qs, NEVER_ON])
            for on in qs:
                for ratio in GRID_OFF_RATIOS:
                    for min_n in (GRID_MIN_EMBEDDINGS[:1] if is_urgent else GRID_MIN_EMBEDDINGS):
                        for hold_n in GRID_HOLD_EMBEDDINGS:
                            setting = (float(on), float(on * ratio), min_n, hold_n)
                            counts = _class_counts(t[:, k], simulate_tracker(values, *setting))
                            if bound_values is not None and not is_urgent and source == "seconds":
                                end90 = _class_counts(bound_truth[:, k], simulate_tracker(bound_values, *setting))[5]
                                counts = (*counts[:5], end90)
                            rows.append((setting, counts, source))
        if not is_urgent and max_end_delay_p90 is not None:
            # Within the end-delay bound; a class with no such setting keeps those that end soonest.
            bound = max(max_end_delay_p90, min(r[1][5] for r in rows))
            if bound > max_end_delay_p90:
                _LOGGER.warning("no tracker setting for %s keeps the end delay p90 within %g s; keeping those "
                                "within %.2f s", classes[k], max_end_delay_p90, bound)
            rows = [r for r in rows if r[1][5] <= bound]
        table.append(rows)
    arrays = [np.array([r[1][:5] for r in rows], np.float64) for rows in table]  # tp fp fn caps fa
    f1s = [2 * a[:, 0] / np.maximum(2 * a[:, 0] + a[:, 1] + a[:, 2], 1) for a in arrays]
    shares = [a[:, 4] / np.maximum(a[:, 3], 1) for a in arrays]
    for k in (k for k, name in enumerate(classes) if name in urgent):
        fires = arrays[k][:, 3] > 0
        fa = arrays[k][:, 4]
        within = fires & (fa <= urgent_max_false_alarms_per_hour * hours)
        if not within.any():  # the fewest false alarms of the settings that caption at all
            within = fires & (fa == (fa[fires].min() if fires.any() else 0.0))
        urgent_pick[k] = int(np.argmax(np.where(within, f1s[k], -1.0)))
    best: tuple | None = None
    for lam in np.linspace(0.0, 3.0, 61):
        pick = [urgent_pick[k] if k in urgent_pick else int(np.argmax(f - lam * sh))
                for k, (f, sh) in enumerate(zip(f1s, shares))]
        tot = sum(a[i] for a, i in zip(arrays, pick))
        micro = 2 * tot[0] / max(2 * tot[0] + tot[1] + tot[2], 1)
        share = tot[4] / max(tot[3], 1)
        within = max_false_alarms is None or share <= max_false_alarms
        key = (within, micro if within else -share)
        if best is None or key > best[0]:
            best = (key, pick, micro, share, float(lam))
    assert best is not None
    _, pick, micro, share, lam = best
    res: dict[str, Any] = {"on": {}, "off": {}, "min_duration_s": {}, "hold_s": {}, "source": {}, "per_class": {},
                           "timeline": {"segment_f1": round(float(micro), 4), "false_alarm_share": round(float(share), 4),
                                        "false_alarm_price": lam}}
    for k, name in enumerate(classes):
        (on, off, min_n, hold_n), (tp, fp, fn, ncap, fa, end90), source = table[k][pick[k]]
        res["on"][name], res["off"][name] = round(on, 4), round(off, 4)
        res["source"][name] = source
        res["min_duration_s"][name], res["hold_s"][name] = round(min_n * STEP, 4), round(hold_n * STEP, 4)
        res["per_class"][name] = {"segment_f1": round(2 * tp / max(2 * tp + fp + fn, 1), 4), "captions": ncap,
                                  "false_alarms": fa, "false_alarms_per_hour": round(fa / max(hours, 1e-9), 2),
                                  "end_delay_p90": round(end90, 3)}
        _LOGGER.info("calibrated %s: %s scores, on %.3f off %.3f min %d hold %d embeddings -> F1 %.4f, %d of %d "
                     "captions false alarms (%.1f per hour)%s", name, source, on, off, min_n, hold_n,
                     res["per_class"][name]["segment_f1"], fa, ncap, fa / max(hours, 1e-9),
                     " (turned off)" if on >= NEVER_ON else "")
    _LOGGER.info("calibrated timeline: micro F1 %.4f, false-alarm share %.3f (price %.2f)", micro, share, lam)
    return res


def collect_scores(classifier: Any, stream: scenes.Stream, lookahead: int, source: str = "seconds",
                   recent: int | None = None) -> npt.NDArray[np.float32]:
    """The per-second scores the daemon's chain gives each embedding at this look-ahead.

    ``source="window"``: the scores it gives classes it takes from the 10-s
    window model (``EventTracker.window_classes``), for every class; with
    ``recent=k``, as it gives them to ``recent_context`` classes.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}; got {source!r}")
    if recent is not None and source != "window":
        raise ValueError("a recent context applies to window scores only (source=\"window\")")
    classes = tuple(classifier.classes)
    windowed = classes if source == "window" else ()
    silent = EventTracker(classes, {c: 1.0 for c in classes}, {c: 1.0 for c in classes}, scoring="seconds",
                          lookahead=lookahead, window_classes=windowed,
                          recent_context={c: recent for c in windowed} if recent else None)
    return run_chain(classifier, silent, stream)[1]


def write_tracker(bundle: str | os.PathLike, settings: dict[str, Any], lookahead: int, figures: dict[str, Any]) -> None:
    """Stores a calibrated per-second tracker in a bundle's ``metadata.json``."""
    from pipeline.classifier import METADATA_NAME
    from pipeline.captions import write_atomic

    path = Path(bundle) / METADATA_NAME
    meta = json.loads(path.read_text(encoding="utf-8"))
    meta["tracker"] = {
        "scoring": "seconds",
        "lookahead": int(lookahead),
        "on": settings["on"], "off": settings["off"],
        "min_duration_s": settings["min_duration_s"], "hold_s": settings["hold_s"],
        "window_classes": [c for c, src in (settings.get("source") or {}).items() if src.startswith("window")],
        "recent_context": {c: int(src.removeprefix("window+recent"))
                           for c, src in (settings.get("source") or {}).items() if src.startswith("window+recent")},
        "calibrated_on": figures.get("calibrated_on"),
        "timeline": figures.get("timeline"),
    }
    write_atomic(path, json.dumps(meta, indent=2) + "\n")


# --- the picture --------------------------------------------------------------------

def plot_timeline(
    path: str | os.PathLike,
    truth: npt.NDArray,
    rows: Sequence[tuple[str, list[Caption], npt.NDArray | None]],
    classes: Sequence[str],
    seconds: float = PNG_SECONDS,
    start: int = 0,
    notes: dict[str, str] | None = None,
) -> Path:
    """Draws an excerpt: per class, the ground truth, then each system's captions and score curve.

    Args:
      path: PNG to write.
      truth: ``[T, C]`` 0/1.
      rows: ``(name, captions, scores [T, C] or None)`` per system.
      classes: class names.
      seconds: length of the excerpt.
      start: first embedding drawn.
      notes: class -> a remark shown after its panel's title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(int(seconds / STEP), truth.shape[0] - start)
    x0 = start * STEP
    colours = ("#1b5e20", "#0d47a1", "#b71c1c", "#4a148c", "#e65100")
    fig, axes = plt.subplots(len(classes), 1, figsize=(15, 2.1 * len(classes)), sharex=True)
    for k, (ax, name) in enumerate(zip(np.atleast_1d(axes), classes)):
        lanes = len(rows) + 1
        for a, b in _runs(truth[start : start + n, k] > 0):
            ax.add_patch(plt.Rectangle((x0 + a * STEP, lanes - 1 + 0.1), (b - a) * STEP, 0.8, color="#555555"))
        ax.text(x0 - 1, lanes - 0.5, "sound (truth)", ha="right", va="center", fontsize=9)
        for r, (label, caps, sc) in enumerate(rows):
            lane = lanes - 2 - r
            col = colours[r % len(colours)]
            for cp in caps:
                if cp.cls != k or cp.end <= start or cp.start >= start + n:
                    continue
                a, b = max(cp.start, start), min(cp.end, start + n)
                ax.add_patch(plt.Rectangle((a * STEP, lane + 0.1), (b - a) * STEP, 0.8, color=col, alpha=0.85))
            if sc is not None:
                t = x0 + (np.arange(n) + 0.5) * STEP
                ax.plot(t, lane + 0.1 + 0.8 * np.nan_to_num(sc[start : start + n, k]), color="black", lw=0.8)
            ax.text(x0 - 1, lane + 0.5, label, ha="right", va="center", fontsize=9, color=col)
        ax.set_ylim(0, lanes)
        ax.set_yticks([])
        ax.set_title(name, loc="left", fontsize=12, fontweight="bold")
        if notes and name in notes:
            ax.set_title(notes[name], loc="right", fontsize=9)
        ax.set_xlim(x0, x0 + n * STEP)
    np.atleast_1d(axes)[-1].set_xlabel("stream time, s (bars: ground truth and captions; line: the score the tracker saw, 0 to 1)")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


# --- tfrecords of a stream (for replaying it through audiocapd) -----------------------

def write_stream_tfrecords(stream: scenes.Stream, clips: Any, folder: str | os.PathLike) -> Path:
    """Writes a stream as one tfrecord file, clips in play order (``audiocapd --source replay:FOLDER``)."""
    import tensorflow as tf

    from pipeline import audioset

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "timeline.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as w:
        for a, b in clip_runs(stream):
            i = int(stream.clip[a])
            ex = tf.train.SequenceExample()
            ctx = ex.context.feature
            ctx[audioset.VIDEO_ID].bytes_list.value.append(str(clips.video_id[i]).encode())
            ctx[audioset.START_TIME].float_list.value.append(float(clips.start[i]))
            ctx[audioset.END_TIME].float_list.value.append(float(clips.start[i]) + 10.0)
            ctx[audioset.LABELS].int64_list.value.extend(np.flatnonzero(clips.labels[i]).tolist())
            fl = ex.feature_lists.feature_list[audioset.AUDIO_EMBEDDING]
            for row in stream.embeddings[a:b]:
                fl.feature.add().bytes_list.value.append(row.tobytes())
            w.write(ex.SerializeToString())
    return path


def read_vtt(path: str | os.PathLike, classes: Sequence[str], captions: dict[str, str]) -> list[Caption]:
    """Reads the daemon's WebVTT output back into captions on the embedding grid."""
    text_to_class = {captions[c]: k for k, c in enumerate(classes)}
    out = []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if "-->" in line and i + 1 < len(lines):
            a, b = (_vtt_seconds(x.strip()) for x in line.split("-->"))
            k = text_to_class.get(lines[i + 1].strip())
            if k is not None:
                out.append(Caption(k, a / STEP, b / STEP))
    return out


def _vtt_seconds(stamp: str) -> float:
    h, m, s = stamp.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


# --- the whole evaluation -----------------------------------------------------------

def evaluate_timeline(
    model_dir: str | os.PathLike | None,
    data: Any,
    seed: int = 0,
    half: str = "report",
    png: str | os.PathLike | None = None,
    calibrate_bundle: bool = False,
    lookahead_s: float | None = None,
    runtime: str = "auto",
    val_fraction: float = 0.2,
    write_tfrecords: str | os.PathLike | None = None,
    max_false_alarms: float | None = MAX_FALSE_ALARMS,
    urgent_max_false_alarms_per_hour: float = URGENT_MAX_FALSE_ALARMS_PER_HOUR,
) -> dict[str, Any]:
    """Runs the timeline evaluation (and optionally calibrates the bundle's tracker first).

    Args:
      model_dir: the bundle (``None``: the shipped one).
      data: tfrecords (``bal_train``); only the grouped split's validation side is used.
      seed: the stream's seed.
      half: which half of the validation videos to build the stream from.
      png: write the timeline picture here.
      calibrate_bundle: first calibrate the per-second tracker on a stream of
        the *calibration* half and store it in the bundle's metadata.
      lookahead_s: the per-second look-ahead to calibrate for (default 0.96 s).
      runtime: classifier runtime (``auto``, ``litert``, ``keras``).
      write_tfrecords: also write the stream there as tfrecords (to replay it
        through ``audiocapd``), with ``truth.npz`` beside them.
      max_false_alarms: calibration's cap on the false-alarm share (``None``: none).
      urgent_max_false_alarms_per_hour: calibration's cap for each urgent class.

    Returns:
      One JSON-ready dict: the daemon's default captions, the baselines, stream facts.
    """
    from pipeline.classifier import load_classifier
    from pipeline.labels import ClassMap

    clf = load_classifier(model_dir, runtime=runtime)
    class_map = ClassMap.from_metadata(clf.metadata["classes"])
    classes = tuple(clf.classes)
    result: dict[str, Any] = {"model": f"{clf.name}@{clf.version}", "bundle": str(clf.path), "runtime": clf.runtime}
    settings: dict[str, Any] = {}
    figures: dict[str, Any] = {}
    lookahead = params.EVENT_LOOKAHEAD_EMBEDDINGS
    if calibrate_bundle:
        if not clf.has_seconds:
            raise ValueError(f"{clf.path} has no per-second model to calibrate")
        if lookahead_s is not None:
            lookahead = int(round(lookahead_s / STEP))
        cal_clips, cal_y = timeline_clips(data, class_map, val_fraction, "calibration")
        cal_streams = [make_stream(cal_clips, cal_y, seed=s) for s in (101, 102)]
        sc = np.concatenate([collect_scores(clf, st, lookahead) for st in cal_streams])
        truth = np.concatenate([st.labels for st in cal_streams])
        urgent = [c for c in classes if clf.urgent.get(c)]
        many = scenes.is_large_class_set(len(classes))
        win = np.concatenate([collect_scores(clf, st, lookahead, "window") for st in cal_streams]) if many else None
        recent = ({k: np.concatenate([collect_scores(clf, st, lookahead, "window", recent=k) for st in cal_streams])
                   for k in RECENT_CONTEXTS} if many and urgent else None)
        settings = calibrate(sc, truth, classes, max_false_alarms, urgent=urgent, window_scores=win,
                             urgent_max_false_alarms_per_hour=urgent_max_false_alarms_per_hour,
                             recent_scores=recent)
        figures = {
            "calibrated_on": (f"caption timeline: 2 streams (seeds 101, 102; {len(truth)} embeddings) of the "
                              f"calibration half of the grouped validation split ({val_fraction:.0%} of bal_train "
                              "by video_id): best micro segment F1"
                              + ("" if max_false_alarms is None else f" with false alarms <= {max_false_alarms:.0%}")
                              + f", end delay p90 <= {TARGET_END_DELAY_P90:g} s per class, minimum duration "
                              f"<= {max(GRID_MIN_EMBEDDINGS)} and hold <= {max(GRID_HOLD_EMBEDDINGS)} embeddings"
                              + (f"; urgent classes ({', '.join(urgent)}) start after "
                                 f"{GRID_MIN_EMBEDDINGS[0]} embedding, are never turned off and take their own "
                                 f"best F1 with at most {urgent_max_false_alarms_per_hour:g} false alarms per hour"
                                 if urgent else "")
                              + ("; every class tried per-second and 10-s window scores" if win is not None else "")
                              + (f", urgent classes also the window score raised to that of its last "
                                 f"{'/'.join(map(str, RECENT_CONTEXTS))} embeddings alone" if recent else "")),
            "timeline": {"calibration": {**settings["timeline"], "per_class": settings["per_class"]}},
        }
        write_tracker(clf.path, settings, lookahead, figures)
        result["calibration"] = {"lookahead": lookahead, **settings}
        clf = load_classifier(model_dir, runtime=runtime)
    clips, y = timeline_clips(data, class_map, val_fraction, half)
    stream = make_stream(clips, y, seed=seed)
    truth = stream.labels
    if write_tfrecords:
        result["tfrecords"] = str(write_stream_tfrecords(stream, clips, write_tfrecords))
        np.savez_compressed(Path(write_tfrecords) / "truth.npz", labels=truth, classes=np.array(classes))
    tracker = make_tracker(clf)
    caps, sc = run_chain(clf, tracker, stream)
    result["stream"] = {
        "half": half, "seed": seed, "clips": int(len(stream.clip_order())), "scenes": int(len(stream.kinds)),
        "embeddings": len(stream), "minutes": round(stream.seconds / 60, 1),
        "scenes_per_kind": {("none" if k == scenes.NONE else classes[k]): int((stream.kinds == k).sum())
                            for k in [scenes.NONE, *range(len(classes))]},
    }
    result["daemon"] = {"scoring": tracker.scoring, "lookahead_s": round(tracker.lookahead * STEP, 2),
                        **score_timeline(truth, caps, classes),
                        "intervals": scene_intervals(truth, caps, stream.scene)}
    w_caps, w_sc = run_chain(clf, window_tracker(clf), stream)
    result["window_daemon_before"] = score_timeline(truth, w_caps, classes)
    a_caps, a_sc = clip_aligned(clf, clips, stream)
    result["clip_aligned"] = {**score_timeline(truth, a_caps, classes),
                              "intervals": scene_intervals(truth, a_caps, stream.scene)}
    s_caps, s_sc = second_alone(clf, stream)
    result["second_alone"] = score_timeline(truth, s_caps, classes)
    if calibrate_bundle:
        keep = ("segment_f1", "start_delay_p50", "start_delay_p90", "end_delay_p50", "end_delay_p90", "events",
                "missed", "captions", "false_alarms", "false_alarm_share", "shown_after_sound_start_p50",
                "gone_after_sound_end_p50", "intervals")
        figures["timeline"]["report"] = {"stream": result["stream"], **{k: result["daemon"][k] for k in keep}}
        write_tracker(clf.path, settings, lookahead, figures)
    if png:
        rows = [(f"captions now ({tracker.scoring})", caps, sc), ("captions before (window)", w_caps, w_sc),
                ("clip aligned", a_caps, None)]
        result["png"] = str(plot_timeline(png, truth, rows, classes, notes={
            c: ("captions now: from the 10-s window model's score"
                + (f", or its score of the last {tracker.recent_context[c]} s alone if higher"
                   if c in tracker.recent_context else "")) for c in tracker.window_classes}))
    return result
