"""The caption timeline against the truth: AudioSet's temporally strong labels.

``../shared/audioset/strong_dev`` holds AudioSet eval clips with the onset and
offset of every sound (ontology ancestors included, so a bark is also "Dog",
"Domestic animals, pets" and "Animal"). This module plays them as a *natural*
stream: every clip, back to back, in a seeded random order, overlapping sounds
and clips with none of the classes as they come (no scenes, no curation). The
daemon's own :class:`pipeline.chain.CaptionChain` with the bundle's tracker
captions it, and the field's libraries score the captions against the strong
labels:

* ``sed_eval`` (Mesaros et al. 2016): segment-based F1 and error rate on 1-s
  segments, and event-based F1 with a 1-s onset collar (onset only; and onset
  plus offset within max(1 s, 20 % of the event));
* ``sed_scores_eval`` (Ebbers et al. 2022): the threshold-free PSDS of the
  per-second scores the tracker saw (DCASE scenario 1: detection and ground
  truth tolerance 0.7, no cross-trigger penalty, up to 100 false positives per
  hour), per class and over the classes;
* as the curated timeline does: the share of captions that overlap no strong
  event of their class at all (*false alarms*), and the strong events no
  caption of their class overlaps (*missed*).

A class of the bundle covers a strong event when the event's label is the
class's ontology name or a display name of one of the AudioSet labels the class
maps (its ``label_indices``: what the model was trained to call that class).
Events of one class that overlap or touch, in the stream, are one event.

**Folds.** The clips are split into :data:`FOLDS` folds by a hash of their
``video_id``. Each fold is played as its own stream (its clips in a seeded
random order); the five streams together play every clip once. Anything fitted
on strong labels (a tracker calibration, a fine-tuned model) is fitted on four
folds and scored on the fifth, for each fold in turn; reported are the figures
pooled over the five held-out streams and their mean and spread over folds.

:func:`fit_strong` (``audiocap-train fit-strong``) fine-tunes a bundle's per-second model on the strong frames
beside weak windows of ``bal_train`` and calibrates its tracker on the strong streams, by nested
cross-validation.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from pipeline import params

_LOGGER = logging.getLogger(__name__)

STEP = params.EMBEDDING_SECONDS
FOLDS = 5
FOLD_SALT = "audiocap-strong"
"""Salt of the hash of ``video_id`` that assigns a clip to a fold."""
STREAM_SEED = 0
TFRECORD = "strong_dev.tfrecord"
LABELS_TSV = "strong_labels.tsv"
SEGMENT_SECONDS = 1.0
ONSET_COLLAR = 1.0
OFFSET_SHARE = 0.2
PSDS_DTC = PSDS_GTC = 0.7
PSDS_MAX_EFPR = 100.0
"""PSDS: DCASE's scenario 1 (tolerances 0.7, up to 100 false positives per hour)."""
PSDS_SCORE_DECIMALS = 3
"""Scores are rounded to this many decimals for PSDS: ten times fewer thresholds to sweep (measured on a
fold of strong_dev: 3 s instead of 14 s per call, PSDS within 0.0005 of the unrounded value)."""


@dataclass(frozen=True)
class StrongSet:
    """Strong-labelled clips in memory.

    Attributes:
      clips: :class:`train.data.Clips` (short clips padded; real length in ``frames``).
      events: per clip, its strong events ``(onset, offset, display name)``, seconds from the clip's start.
    """

    clips: Any
    events: tuple[tuple[tuple[float, float, str], ...], ...]

    def __len__(self) -> int:
        return len(self.clips)


@dataclass(frozen=True)
class StrongStream:
    """A natural stream of strong-labelled clips (duck-types :class:`train.scenes.Stream` for the chain).

    Attributes:
      embeddings: uint8 ``[T, 128]``.
      labels: uint8 ``[T, C]``: 1 where strong events of the class cover more than half of the embedding.
      clip: int64 ``[T]``: index (in the :class:`StrongSet`) of the clip each embedding belongs to.
      events: per class, the merged strong events ``(onset, offset)`` in stream seconds.
      name: the stream's name (``fold0`` ...).
    """

    embeddings: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.uint8]
    clip: npt.NDArray[np.int64]
    events: tuple[tuple[tuple[float, float], ...], ...]
    name: str = "stream"

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def seconds(self) -> float:
        return len(self) * STEP

    def clip_order(self) -> npt.NDArray[np.int64]:
        starts = np.flatnonzero(np.r_[True, self.clip[1:] != self.clip[:-1]])
        return self.clip[starts]


def load_strong(folder: str | os.PathLike) -> StrongSet:
    """Reads ``strong_dev.tfrecord`` and ``strong_labels.tsv`` from a folder.

    Raises:
      FileNotFoundError: a file is missing (names it and what the folder must hold).
    """
    from train import data as data_mod

    root = Path(folder)
    rec, tsv = root / TFRECORD, root / LABELS_TSV
    for p in (rec, tsv):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: --strong needs a folder with {TFRECORD} and {LABELS_TSV} "
                                    "(e.g. ../shared/audioset/strong_dev)")
    clips, _ = data_mod.load_clips(str(rec), short="pad")
    by_video: dict[str, list[tuple[float, float, str]]] = {}
    with tsv.open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            by_video.setdefault(row["video_id"], []).append(
                (float(row["onset"]), float(row["offset"]), row["event_label"]))
    events = tuple(tuple(by_video.get(str(v), ())) for v in clips.video_id)
    missing = sum(1 for e in events if not e)
    if missing:
        _LOGGER.info("%d of %d strong clips have no strong label rows", missing, len(clips))
    return StrongSet(clips, events)


def class_names(class_map: Any, labels_csv: str | os.PathLike | None = None) -> list[frozenset[str]]:
    """Per class, the strong-label display names it covers (its ontology names and its labels' names)."""
    from pipeline import labels as labels_mod

    display: dict[int, str] = {}
    if labels_csv is not None and Path(labels_csv).is_file():
        display = {l.index: l.name for l in labels_mod.read_label_index(labels_csv)}
    out = []
    for c, name in enumerate(class_map.names):
        names = {name, *(class_map.ontology[c] if class_map.ontology else ())}
        names |= {display[i] for i in class_map.label_indices[c] if i in display}
        out.append(frozenset(names))
    return out


def folds_of(video_ids: Iterable[str], folds: int = FOLDS, salt: str = FOLD_SALT) -> npt.NDArray[np.int64]:
    """``[N]`` fold of each clip: a hash of its video id (all clips of one video in one fold)."""
    return np.array([int.from_bytes(hashlib.sha1(f"{salt}:{v}".encode()).digest()[:8], "big") % folds
                     for v in video_ids], dtype=np.int64)


def _merge(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1] + 1e-6:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(round(a, 4), round(b, 4)) for a, b in out]


def build_stream(strong: StrongSet, names: Sequence[frozenset[str]], order: Sequence[int],
                 name: str = "stream") -> StrongStream:
    """The clips ``order`` played back to back, with their strong truth for the classes ``names``."""
    clips = strong.clips
    embs, owner = [], []
    raw: list[list[tuple[float, float]]] = [[] for _ in names]
    t0 = 0.0
    for i in order:
        n = max(int(clips.frames[i]), 1)
        embs.append(clips.x[i, :n])
        owner.append(np.full(n, i, np.int64))
        span = n * STEP
        for onset, offset, label in strong.events[i]:
            a, b = max(onset, 0.0), min(offset, span)
            if b <= a:
                continue
            for c, ns in enumerate(names):
                if label in ns:
                    raw[c].append((t0 + a, t0 + b))
        t0 += span
    x = np.concatenate(embs) if embs else np.zeros((0, params.EMBEDDING_SIZE), np.uint8)
    events = tuple(tuple(_merge(r)) for r in raw)
    return StrongStream(x, truth_grid(events, len(x)), np.concatenate(owner) if owner else np.zeros(0, np.int64),
                        events, name)


def truth_grid(events: Sequence[Sequence[tuple[float, float]]], n: int) -> npt.NDArray[np.uint8]:
    """uint8 ``[n, C]``: 1 where a class's events cover more than half of the embedding."""
    cover = np.zeros((n, len(events)))
    for c, evs in enumerate(events):
        for a, b in evs:
            i0, i1 = int(np.floor(a / STEP)), min(int(np.ceil(b / STEP)), n)
            for i in range(i0, i1):
                cover[i, c] += min(b, (i + 1) * STEP) - max(a, i * STEP)
    return (cover > STEP / 2).astype(np.uint8)


def fold_streams(strong: StrongSet, names: Sequence[frozenset[str]], folds: int = FOLDS,
                 seed: int = STREAM_SEED) -> list[StrongStream]:
    """One natural stream per fold: its clips in a seeded random order."""
    fold = folds_of(strong.clips.video_id, folds)
    rng = np.random.default_rng(seed)
    return [build_stream(strong, names, rng.permutation(np.flatnonzero(fold == f)), f"fold{f}")
            for f in range(folds)]


# --- scoring ------------------------------------------------------------------------

def _sed_lists(stream: StrongStream, captions: Sequence[Any], classes: Sequence[str]) -> tuple[list, list]:
    ref = [{"filename": stream.name, "event_label": classes[c], "onset": a, "offset": b}
           for c, evs in enumerate(stream.events) for a, b in evs]
    est = [{"filename": stream.name, "event_label": classes[cp.cls], "onset": round(cp.start * STEP, 4),
            "offset": round(cp.end * STEP, 4)} for cp in captions if cp.end > cp.start]
    return ref, est


class SedScores:
    """``sed_eval`` metrics accumulated over one or more streams (segment 1 s; events onset / onset+offset)."""

    def __init__(self, classes: Sequence[str]) -> None:
        import sed_eval

        self.classes = list(classes)
        self.segment = sed_eval.sound_event.SegmentBasedMetrics(self.classes, time_resolution=SEGMENT_SECONDS)
        self.onset = sed_eval.sound_event.EventBasedMetrics(
            self.classes, t_collar=ONSET_COLLAR, percentage_of_length=OFFSET_SHARE, evaluate_onset=True,
            evaluate_offset=False)
        self.onset_offset = sed_eval.sound_event.EventBasedMetrics(
            self.classes, t_collar=ONSET_COLLAR, percentage_of_length=OFFSET_SHARE, evaluate_onset=True,
            evaluate_offset=True)

    def add(self, stream: StrongStream, captions: Sequence[Any]) -> None:
        ref, est = _sed_lists(stream, captions, self.classes)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for m in (self.segment, self.onset, self.onset_offset):
                m.evaluate(reference_event_list=ref, estimated_event_list=est)

    def results(self) -> dict[str, Any]:
        seg, on, onoff = (m.results() for m in (self.segment, self.onset, self.onset_offset))

        def r(x: Any) -> float | None:
            return None if x is None or not np.isfinite(x) else round(float(x), 4)

        out: dict[str, Any] = {
            "segment_f1": r(seg["overall"]["f_measure"]["f_measure"]),
            "segment_precision": r(seg["overall"]["f_measure"]["precision"]),
            "segment_recall": r(seg["overall"]["f_measure"]["recall"]),
            "segment_error_rate": r(seg["overall"]["error_rate"]["error_rate"]),
            "event_onset_f1": r(on["overall"]["f_measure"]["f_measure"]),
            "event_onset_precision": r(on["overall"]["f_measure"]["precision"]),
            "event_onset_recall": r(on["overall"]["f_measure"]["recall"]),
            "event_onset_offset_f1": r(onoff["overall"]["f_measure"]["f_measure"]),
            "per_class": {},
        }
        for c in self.classes:
            out["per_class"][c] = {
                "segment_f1": r(seg["class_wise"][c]["f_measure"]["f_measure"]),
                "segment_error_rate": r(seg["class_wise"][c]["error_rate"]["error_rate"]),
                "event_onset_f1": r(on["class_wise"][c]["f_measure"]["f_measure"]),
                "event_onset_offset_f1": r(onoff["class_wise"][c]["f_measure"]["f_measure"]),
            }
        return out


def caption_truth_counts(stream: StrongStream, captions: Sequence[Any], classes: Sequence[str],
                         within_s: float = 2.0) -> dict[str, Any]:
    """False-alarm captions (no strong event of their class overlaps them), missed strong events, and per
    class how soon a caption is on the wall after its event's onset (``shown``, audio clock)."""
    per: dict[str, Any] = {}
    tot = {"captions": 0, "false_alarms": 0, "events": 0, "missed": 0}
    hours = stream.seconds / 3600.0
    for c, name in enumerate(classes):
        evs = np.array(stream.events[c], np.float64).reshape(-1, 2)
        caps = [(cp.start * STEP, cp.end * STEP, None if cp.shown is None else cp.shown * STEP)
                for cp in captions if cp.cls == c and cp.end > cp.start]
        fa = sum(1 for a, b, _ in caps if not np.any((evs[:, 0] < b) & (evs[:, 1] > a)))
        missed, shown = 0, []
        for a, b in evs:
            over = [cp for cp in caps if cp[0] < b and cp[1] > a]
            if not over:
                missed += 1
                continue
            first = min(over, key=lambda cp: cp[0])
            if first[2] is not None:
                shown.append(first[2] - a)
        per[name] = {"events": int(len(evs)), "missed": missed, "captions": len(caps), "false_alarms": fa,
                     "false_alarm_share": round(fa / len(caps), 4) if caps else None,
                     "false_alarms_per_hour": round(fa / hours, 2) if hours else None,
                     f"shown_within_{within_s:g}s": round(sum(d <= within_s + 1e-6 for d in shown) / len(evs), 4)
                     if len(evs) else None}
        for k, v in (("captions", len(caps)), ("false_alarms", fa), ("events", len(evs)), ("missed", missed)):
            tot[k] += int(v)
    tot["false_alarm_share"] = round(tot["false_alarms"] / tot["captions"], 4) if tot["captions"] else None
    return {**tot, "per_class": per}


def psds_scores(streams: Sequence[StrongStream], scores: Sequence[npt.NDArray],
                classes: Sequence[str]) -> dict[str, Any]:
    """Threshold-free PSDS (``sed_scores_eval``) of per-second scores, each stream one audio file."""
    from sed_scores_eval import intersection_based
    from sed_scores_eval.base_modules.scores import create_score_dataframe

    # PSDS is undefined for a class without events here (a fold may hold no knock): it is left out, as None.
    cols = [c for c in range(len(classes)) if any(len(st.events[c]) for st in streams)]
    names = [classes[c] for c in cols]
    sc, gt, dur = {}, {}, {}
    for st, s in zip(streams, scores):
        ts = np.arange(len(st) + 1) * STEP
        values = np.round(np.nan_to_num(np.asarray(s, np.float64)[:, cols]), PSDS_SCORE_DECIMALS)
        sc[st.name] = create_score_dataframe(values, ts, names)
        gt[st.name] = [(a, b, classes[c]) for c in cols for a, b in st.events[c]]
        dur[st.name] = st.seconds
    out: dict[str, Any] = {"dtc": PSDS_DTC, "gtc": PSDS_GTC, "max_efpr_per_hour": PSDS_MAX_EFPR}
    for key, alpha_st in (("psds", 0.0), ("psds_alpha_st1", 1.0)):
        value, per_class, *_ = intersection_based.psds(
            sc, gt, dur, dtc_threshold=PSDS_DTC, gtc_threshold=PSDS_GTC, alpha_ct=0.0, alpha_st=alpha_st,
            unit_of_time="hour", max_efpr=PSDS_MAX_EFPR)
        out[key] = round(float(value), 4)
        if alpha_st == 0.0:
            out["per_class"] = {c: round(float(per_class[c]), 4) if c in per_class else None for c in classes}
    return out


def score_streams(streams: Sequence[StrongStream], captions: Sequence[Sequence[Any]],
                  scores: Sequence[npt.NDArray] | None, classes: Sequence[str], psds: bool = True) -> dict[str, Any]:
    """All the strong-truth figures of captions (and scores) on one or more streams, pooled."""
    from train.timeline import score_timeline

    sed = SedScores(classes)
    counts: list[dict[str, Any]] = []
    grid: list[dict[str, Any]] = []
    for st, caps in zip(streams, captions):
        sed.add(st, caps)
        counts.append(caption_truth_counts(st, caps, classes))
        grid.append(score_timeline(st.labels, caps, classes))
    res = sed.results()
    tot = {k: sum(c[k] for c in counts) for k in ("captions", "false_alarms", "events", "missed")}
    res.update(tot)
    # As the curated timeline counts them: runs of embeddings the class's strong events cover more than half of.
    res["grid_events"] = sum(g["events"] for g in grid)
    res["grid_missed"] = sum(g["missed"] for g in grid)
    res["false_alarm_share"] = round(tot["false_alarms"] / tot["captions"], 4) if tot["captions"] else None
    hours = sum(st.seconds for st in streams) / 3600.0
    for name in classes:
        pc = {k: sum(c["per_class"][name][k] for c in counts) for k in ("captions", "false_alarms", "events", "missed")}
        within = [c["per_class"][name]["shown_within_2s"] * c["per_class"][name]["events"] for c in counts
                  if c["per_class"][name]["shown_within_2s"] is not None]
        pc["grid_events"] = sum(g["per_class"][name]["events"] for g in grid)
        pc["grid_missed"] = sum(g["per_class"][name]["missed"] for g in grid)
        pc["false_alarm_share"] = round(pc["false_alarms"] / pc["captions"], 4) if pc["captions"] else None
        pc["false_alarms_per_hour"] = round(pc["false_alarms"] / hours, 2) if hours else None
        pc["shown_within_2s"] = round(sum(within) / pc["events"], 4) if pc["events"] else None
        res["per_class"][name].update(pc)
    if psds and scores is not None:
        res["psds"] = psds_scores(streams, scores, classes)
    return res


SUMMARY_KEYS = ("segment_f1", "segment_error_rate", "event_onset_f1", "event_onset_offset_f1", "false_alarm_share",
                "missed", "events", "grid_missed", "grid_events")


def fold_summary(per_fold: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean, standard deviation, min and max over folds of the headline figures (and PSDS)."""
    out: dict[str, Any] = {}
    rows = {k: [f[k] for f in per_fold if f.get(k) is not None] for k in SUMMARY_KEYS}
    rows["psds"] = [f["psds"]["psds"] for f in per_fold if f.get("psds")]
    for k, v in rows.items():
        if v:
            a = np.asarray(v, np.float64)
            out[k] = {"mean": round(float(a.mean()), 4), "sd": round(float(a.std(ddof=1)) if len(a) > 1 else 0.0, 4),
                      "min": round(float(a.min()), 4), "max": round(float(a.max()), 4)}
    return out


def figures_over_folds(streams: Sequence[StrongStream], captions: Sequence[Sequence[Any]],
                       scores: Sequence[npt.NDArray], classes: Sequence[str], psds: bool = True) -> dict[str, Any]:
    """One caption set per fold stream: the pooled figures, each fold's (``folds``) and ``over_folds``."""
    per_fold = [score_streams([st], [c], [s], classes, psds) for st, c, s in zip(streams, captions, scores)]
    return {**score_streams(streams, captions, scores, classes, psds), "folds": per_fold,
            "over_folds": fold_summary(per_fold)}


def bundle_streams(clf: Any, strong_dir: str | os.PathLike, folds: int = FOLDS,
                   seed: int = STREAM_SEED) -> tuple[StrongSet, list[frozenset[str]], list[StrongStream]]:
    """The strong clips, the display names each class of a loaded bundle covers, and the fold streams."""
    from pipeline.labels import ClassMap, find_audioset_metadata

    class_map = ClassMap.from_metadata(clf.metadata["classes"])
    try:
        labels_csv: Path | None = find_audioset_metadata(strong_dir)[0]
    except Exception:  # noqa: BLE001 - the class and ontology names alone still map the ancestors
        labels_csv = None
    strong = load_strong(strong_dir)
    names = class_names(class_map, labels_csv)
    return strong, names, fold_streams(strong, names, folds, seed)


# --- the evaluation -------------------------------------------------------------------

def tracker_from_settings(classifier: Any, settings: Mapping[str, Any], lookahead: int) -> Any:
    """The tracker a calibration's settings give (as :func:`pipeline.events.make_tracker` builds it from a bundle)."""
    from pipeline.events import EventTracker

    classes = tuple(classifier.classes)
    src = dict(settings.get("source") or {})
    window = tuple(c for c in classes if str(src.get(c, "seconds")).startswith("window"))
    recent = {c: int(str(src[c]).removeprefix("window+recent")) for c in window
              if str(src[c]).startswith("window+recent")}
    urgent = {c: bool(u) for c, u in dict(getattr(classifier, "urgent", None) or {}).items() if c in classes}
    return EventTracker(classes, settings["on"], settings["off"], dict(getattr(classifier, "captions", None) or {}),
                        settings["min_duration_s"], settings["hold_s"], scoring="seconds", lookahead=lookahead,
                        urgent=urgent, window_classes=window, recent_context=recent)


def _fold_scores(clf: Any, streams: Sequence[StrongStream], lookahead: int, many: bool, urgent: bool) -> list[dict]:
    """Per stream, the scores each calibration source gives (the chain's, at this look-ahead)."""
    from train.timeline import RECENT_CONTEXTS, collect_scores

    out = []
    for st in streams:
        d: dict[str, Any] = {"seconds": collect_scores(clf, st, lookahead)}
        if many:
            d["window"] = collect_scores(clf, st, lookahead, "window")
            if urgent:
                d["recent"] = {k: collect_scores(clf, st, lookahead, "window", recent=k) for k in RECENT_CONTEXTS}
        out.append(d)
    return out


def calibrate_on(clf: Any, streams: Sequence[StrongStream], scores: Sequence[dict], max_false_alarms: float | None,
                 urgent_max_false_alarms_per_hour: float) -> dict[str, Any]:
    """:func:`train.timeline.calibrate` on these streams' strong truth."""
    from train.timeline import RECENT_CONTEXTS, calibrate

    classes = tuple(clf.classes)
    truth = np.concatenate([st.labels for st in streams])
    cat = lambda key: np.concatenate([s[key] for s in scores]) if key in scores[0] else None  # noqa: E731
    recent = ({k: np.concatenate([s["recent"][k] for s in scores]) for k in RECENT_CONTEXTS}
              if "recent" in scores[0] else None)
    # No end-delay bound: strong events a second apart make it meaningless (fit-strong holds it on curated streams).
    return calibrate(cat("seconds"), truth, classes, max_false_alarms, urgent=[c for c in classes if clf.urgent.get(c)],
                     window_scores=cat("window"), urgent_max_false_alarms_per_hour=urgent_max_false_alarms_per_hour,
                     recent_scores=recent, max_end_delay_p90=None)


def learned_from(metadata: Mapping[str, Any], strong_dir: str | os.PathLike) -> list[str]:
    """What of a bundle was fitted on the strong clips of ``strong_dir`` (by its folder name in the
    bundle's metadata): its per-second model, its tracker, neither."""
    name = Path(strong_dir).resolve().name
    out = []
    tuned = (metadata.get("seconds") or {}).get("strong_finetune") or {}
    if name in str(tuned.get("trained_on", "")):
        out.append("its per-second model was fine-tuned on them")
    if name in str((metadata.get("tracker") or {}).get("calibrated_on", "")):
        out.append("its tracker was calibrated on them")
    return out


def evaluate_strong(
    model_dir: str | os.PathLike | None,
    strong_dir: str | os.PathLike,
    folds: int = FOLDS,
    seed: int = STREAM_SEED,
    png: str | os.PathLike | None = None,
    calibrate_bundle: bool = False,
    runtime: str = "auto",
    lookahead_s: float | None = None,
    max_false_alarms: float | None = None,
    urgent_max_false_alarms_per_hour: float | None = None,
    psds: bool = True,
) -> dict[str, Any]:
    """The daemon's captions on natural streams of strong-labelled clips, scored against the strong labels.

    Args:
      model_dir: the bundle (``None``: the shipped one).
      strong_dir: folder with ``strong_dev.tfrecord`` and ``strong_labels.tsv``.
      folds: folds by video id; each is played as its own stream.
      seed: the streams' order.
      png: draw the first minutes of the first fold's stream here.
      calibrate_bundle: calibrate the per-second tracker on the strong streams:
        for each fold on the other folds (the ``daemon`` figures are then
        cross-validated), then on all folds, which is written into the bundle.
        The figures of the bundle as it was come first (``before``).
      max_false_alarms, urgent_max_false_alarms_per_hour: the calibration's caps.

    Returns:
      One JSON-ready dict.
    """
    from pipeline.classifier import load_classifier
    from pipeline.events import make_tracker
    from train import scenes
    from train.timeline import URGENT_MAX_FALSE_ALARMS_PER_HOUR, plot_timeline, run_chain, write_tracker

    urgent_cap = URGENT_MAX_FALSE_ALARMS_PER_HOUR if urgent_max_false_alarms_per_hour is None \
        else urgent_max_false_alarms_per_hour
    clf = load_classifier(model_dir, runtime=runtime)
    classes = tuple(clf.classes)
    strong, names, streams = bundle_streams(clf, strong_dir, folds, seed)
    result: dict[str, Any] = {
        "model": f"{clf.name}@{clf.version}", "bundle": str(clf.path), "runtime": clf.runtime,
        "stream": {"source": str(strong_dir), "clips": len(strong), "folds": folds, "seed": seed,
                   "fold_clips": [int(len(st.clip_order())) for st in streams],
                   "embeddings": int(sum(len(st) for st in streams)),
                   "hours": round(sum(st.seconds for st in streams) / 3600, 3),
                   "strong_events": {c: int(sum(len(st.events[k]) for st in streams)) for k, c in enumerate(classes)},
                   "order": "each fold's clips in a seeded random order, played back to back (no curation)"},
        "class_labels": {c: sorted(n) if len(n) <= 12 else f"{len(n)} display names" for c, n in zip(classes, names)},
    }

    def run_all(tracker_of: Any) -> tuple[list, list, dict[str, Any]]:
        caps, scs = [], []
        for f, st in enumerate(streams):
            c, s = run_chain(clf, tracker_of(f), st)
            caps.append(c)
            scs.append(s)
        return caps, scs, figures_over_folds(streams, caps, scs, classes, psds)

    learned = learned_from(clf.metadata, strong_dir)
    if learned:
        cv = ((clf.metadata.get("tracker") or {}).get("timeline") or {}).get("strong_cross_validated") or {}
        result["in_sample"] = {
            "learned": learned,
            "note": "these clips are not held out: the figures say what the bundle learned, not how it does on "
                    "sounds it has not heard; its cross-validated figures are under cross_validated",
            "cross_validated": {k: cv[k] for k in SUMMARY_KEYS if k in cv} | (
                {"psds": cv["psds"]} if cv.get("psds") is not None else {}),
        }
        _LOGGER.warning("%s is not held out for %s@%s (%s): these figures are in-sample; its cross-validated "
                        "ones: segment F1 %s, error rate %s (metadata.json tracker.timeline.strong_cross_validated)",
                        Path(strong_dir).name, clf.name, clf.version, " and ".join(learned), cv.get("segment_f1", "?"),
                        cv.get("segment_error_rate", "?"))
    tracker = make_tracker(clf)
    caps0, scs0, result["daemon"] = run_all(lambda f: tracker)
    result["daemon"]["tracker"] = "the bundle's: " + str((clf.metadata.get("tracker") or {}).get(
        "calibrated_on", "window scores, clip thresholds"))
    rows = [(f"captions ({clf.name}@{clf.version})", caps0[0], scs0[0])]
    if calibrate_bundle:
        if not clf.has_seconds:
            raise ValueError(f"{clf.path} has no per-second model to calibrate")
        lookahead = int(round(lookahead_s / STEP)) if lookahead_s is not None else params.EVENT_LOOKAHEAD_EMBEDDINGS
        many = scenes.is_large_class_set(len(classes))
        fs = _fold_scores(clf, streams, lookahead, many, any(clf.urgent.get(c) for c in classes))
        per_fold_settings = []
        for f in range(folds):
            rest = [k for k in range(folds) if k != f]
            per_fold_settings.append(calibrate_on(clf, [streams[k] for k in rest], [fs[k] for k in rest],
                                                  max_false_alarms, urgent_cap))
        result["before"] = result.pop("daemon")
        caps1, scs1, result["daemon"] = run_all(lambda f: tracker_from_settings(clf, per_fold_settings[f], lookahead))
        result["daemon"]["tracker"] = (f"calibrated on the strong streams of the other {folds - 1} folds "
                                       "(cross-validated: no fold is scored by a tracker fitted on it)")
        settings = calibrate_on(clf, streams, fs, max_false_alarms, urgent_cap)
        cv = {k: result["daemon"][k] for k in (*SUMMARY_KEYS, "segment_precision", "segment_recall",
                                               "captions", "false_alarms")}
        cv["psds"] = result["daemon"].get("psds", {}).get("psds")
        cv["over_folds"] = result["daemon"]["over_folds"]
        write_tracker(clf.path, settings, lookahead, {
            "calibrated_on": (f"natural streams of all {len(strong)} strong-labelled clips of {Path(strong_dir).name} "
                              f"({folds} folds by video_id, each played in a seeded random order; truth: the strong "
                              "labels on the 0.96-s grid): best micro segment F1"
                              + ("" if max_false_alarms is None else f" with false alarms <= {max_false_alarms:.0%}")
                              + (f"; urgent classes at most {urgent_cap:g} false alarms per hour" if any(
                                  clf.urgent.get(c) for c in classes) else "")),
            "timeline": {"calibration": {**settings["timeline"], "per_class": settings["per_class"]},
                         "strong_cross_validated": cv},
        })
        result["calibration"] = {"lookahead": lookahead, "max_false_alarms": max_false_alarms,
                                 "per_fold": [{k: s[k] for k in ("on", "off", "min_duration_s", "hold_s", "source")}
                                              for s in per_fold_settings],
                                 "all_folds": {k: settings[k] for k in ("on", "off", "min_duration_s", "hold_s",
                                                                        "source", "timeline")}}
        rows = [("captions (calibrated on the other folds)", caps1[0], scs1[0]),
                (f"captions before ({clf.name}@{clf.version})", caps0[0], None)]
    if png:
        result["png"] = str(plot_timeline(png, streams[0].labels, rows, classes))
    return result


# --- per-second model: frame targets from strong labels -------------------------------

FINETUNE_EPOCHS = 8
FINETUNE_LEARNING_RATE = 3e-4
FINETUNE_WEAK_SHARE = 0.5
"""Weak windows (of bal_train's training side) per strong window in every epoch: the multi-task part that
keeps the model what it was on AudioSet at large. 0.5 shipped 2, the smallest of 0.5, 1 and 2 that kept the
curated weak-label stream where the bundle before had it (report F1 0.735 against 0.730; 0.5: 0.700), at
some cost on the strong labels. 0.6 shipped 0.5, which follows the strong truth more closely: nested CV
segment F1 0.713 against 0.676, curated report stream 0.705, inside 0.4's 90 % interval (0.699-0.759), end
delay p90 1.92 s (share 1: 0.692, end p90 3.84 s). 0.7 keeps 0.5 with pooled weak clips
(:data:`FINETUNE_WEAK_POOLED`): docs/timeline.md."""
FINETUNE_WEAK_POOLED = True
"""Weak windows are whole clips judged by their pooled seconds (:func:`pooled_weak_loss`), not scenes whose
every second carries its clip's labels. 0.7: nested CV segment F1 0.727, ER 0.491, onset F1 0.389 against
0.6's 0.713, 0.517, 0.358 (higher in every fold); curated report stream 0.697 against 0.705 (weak share 2
with pooled clips: 0.718, 0.500, 0.365, curated 0.708): docs/timeline.md."""
WEAK_TARGET_OFFSET = 2.0
"""A weak window's targets are its clip's labels plus this, the same in every second: what tells
:func:`pooled_weak_loss` a weak window (pooled) from a strong one (targets 0 or 1 per second)."""


def stream_windows(streams: Sequence[StrongStream]) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]:
    """Every rolling window of the daemon over these streams (left-padded at each stream's start), with the
    strong truth of each of its seconds: ``(uint8 [W, 10, 128], float32 [W, 10, C])``."""
    from train.fit import rolling_windows

    xs, ys = [], []
    for st in streams:
        n = len(st)
        idx = rolling_windows(st.embeddings, np.zeros(n, np.int64), np.arange(n))
        xs.append(st.embeddings[idx])
        ys.append(st.labels[idx].astype(np.float32))
    return np.concatenate(xs), np.concatenate(ys)


def finetune_seconds(
    seconds_keras: str | os.PathLike,
    streams: Sequence[StrongStream],
    weak: tuple[npt.NDArray, npt.NDArray, npt.NDArray] | None = None,
    epochs: int = FINETUNE_EPOCHS,
    learning_rate: float = FINETUNE_LEARNING_RATE,
    weak_share: float = FINETUNE_WEAK_SHARE,
    batch_size: int = 256,
    seed: int = 0,
    verbose: int = 0,
    weak_pooled: bool = FINETUNE_WEAK_POOLED,
) -> Any:
    """Fine-tunes a bundle's per-second model on strong frame targets, beside weakly labelled clips.

    Args:
      seconds_keras: the bundle's ``seconds.keras`` (uint8 ``[B, 10, 128]`` -> ``[B, 10, C]``).
      streams: strong streams to learn from (never those it will be scored on).
      weak: ``(x [N, 10, 128], frames [N], y [N, C])`` weakly labelled clips (bal_train's training side):
        each epoch adds ``weak_share`` x as many weak windows.
      weak_pooled: the weak windows are whole clips (of 10 embeddings), each alone in its window, and only
        their pooled score (linear-softmax over the clip's seconds) answers to the clip's label: a dog clip
        must bark in some second, not in every one (:func:`pooled_weak_loss`). Else windows cut from a fresh
        stream of their scenes (:func:`train.fit.scene_windows`), each second carrying its clip's labels.

    Returns:
      The fine-tuned Keras model.
    """
    import keras

    from train.fit import scene_windows

    keras.utils.set_random_seed(seed)
    model = keras.saving.load_model(seconds_keras, compile=False)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=pooled_weak_loss if weak_pooled else "binary_crossentropy")
    xs, ys = stream_windows(streams)
    rng = np.random.default_rng(seed)
    whole = np.flatnonzero(weak[1] >= params.WINDOW_EMBEDDINGS) if weak is not None else None
    n_weak = int(len(xs) * weak_share)
    for epoch in range(epochs):
        x, y = xs, ys
        if weak is not None and n_weak > 0 and weak_pooled:
            pick = rng.choice(whole, n_weak, replace=len(whole) < n_weak)
            wy = np.repeat(WEAK_TARGET_OFFSET + weak[2][pick][:, None, :].astype(np.float32),
                           params.WINDOW_EMBEDDINGS, axis=1)
            x, y = np.concatenate([xs, weak[0][pick, :params.WINDOW_EMBEDDINGS]]), np.concatenate([ys, wy])
        elif weak is not None and n_weak > 0:
            wx, wt = scene_windows(weak[0], weak[1], weak[2], np.zeros((len(weak[0]), 0), np.uint8), rng, n_weak)
            x, y = np.concatenate([xs, wx]), np.concatenate([ys, wt["seconds"]])
        hist = model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=True, verbose=verbose)
        _LOGGER.info("fine-tune epoch %d/%d: %d strong + %d weak windows, loss %.4f", epoch + 1, epochs, len(xs),
                     len(x) - len(xs), hist.history["loss"][-1])
    return model


def pooled_weak_loss(y_true: Any, y_pred: Any) -> Any:
    """Per window: binary cross-entropy per second for strong windows (targets 0/1); for weak ones (targets
    :data:`WEAK_TARGET_OFFSET` + the clip's label, the same in every second) the cross-entropy of the clip's
    label against the linear-softmax pool of its seconds' scores (sum p^2 / sum p: near the max when one
    second is sure)."""
    from keras import ops

    eps = 1e-6
    p = ops.clip(y_pred, eps, 1.0 - eps)
    weak = ops.cast(y_true[:, 0, 0] >= WEAK_TARGET_OFFSET, p.dtype)
    t = ops.clip(y_true, 0.0, 1.0)
    strong = -ops.mean(t * ops.log(p) + (1.0 - t) * ops.log(1.0 - p), axis=(1, 2))
    label = ops.clip(y_true[:, 0, :] - WEAK_TARGET_OFFSET, 0.0, 1.0)
    pooled = ops.clip(ops.sum(p * p, axis=1) / ops.sum(p, axis=1), eps, 1.0 - eps)
    weak_bce = -ops.mean(label * ops.log(pooled) + (1.0 - label) * ops.log(1.0 - pooled), axis=1)
    return weak * weak_bce + (1.0 - weak) * strong


def average_models(models: Sequence[Any]) -> Any:
    """One Keras model whose per-second scores are the mean of ``models``' (same input and output shapes), so
    the daemon runs an ensemble as one interpreter call of one ``seconds.tflite``."""
    import keras

    if len(models) == 1:
        return models[0]
    models = [_without_optimizer(m) for m in models]  # else each member's optimizer state is saved with it
    for k, m in enumerate(models):
        m.name = f"member_{k}"  # a functional model's layers need distinct names
    inp = keras.Input(models[0].input_shape[1:], dtype=models[0].inputs[0].dtype, name="windows")
    out = keras.layers.Average(name="mean_of_members")([m(inp) for m in models])
    return keras.Model(inp, out, name=f"seconds_mean_of_{len(models)}")


def _without_optimizer(model: Any) -> Any:
    """The same network and weights, uncompiled (a compiled model saves its optimizer's state too: 3 x the size).

    Built from the model's config: ``keras.models.clone_model`` compiles the clone of a compiled model again, so
    its optimizer state was saved as well (0.6's first seconds.keras: 1.5 MB instead of 0.54 MB).
    """
    plain = model.__class__.from_config(model.get_config())
    plain.set_weights(model.get_weights())
    return plain


def _with_seconds(src: Path, dst: Path, model: Any) -> Path:
    """A copy of bundle ``src`` at ``dst`` whose per-second model is ``model`` (Keras and TFLite, parity checked)."""
    import shutil

    from train.export import SECONDS_KERAS_NAME, SECONDS_TFLITE_NAME, check_parity, to_tflite

    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    to_tflite(model, dst / SECONDS_TFLITE_NAME)
    _without_optimizer(model).save(dst / SECONDS_KERAS_NAME)
    x = np.random.default_rng(0).integers(0, 256, (64, params.WINDOW_EMBEDDINGS, params.EMBEDDING_SIZE), np.uint8)
    check_parity(model, dst / SECONDS_TFLITE_NAME, x)
    return dst


def seconds_scores(model: Any, stream: StrongStream, lookahead: int) -> npt.NDArray[np.float32]:
    """The per-second scores the daemon's chain gives a stream with this per-second Keras model (batched: the
    same windows, each second judged at position ``9 - lookahead``; the last seconds from the last window)."""
    from train.fit import rolling_windows

    n = len(stream)
    idx = rolling_windows(stream.embeddings, np.zeros(n, np.int64), np.arange(n))
    out = np.asarray(model.predict(stream.embeddings[idx], batch_size=1024, verbose=0), np.float32)
    pos = params.WINDOW_EMBEDDINGS - 1 - lookahead
    scores = np.empty((n, out.shape[2]), np.float32)
    scores[: n - lookahead] = out[lookahead:, pos]
    scores[max(n - lookahead, 0):] = out[-1, pos + 1 + max(lookahead - n, 0):]
    return scores


def fit_strong(
    model_dir: str | os.PathLike | None,
    strong_dir: str | os.PathLike,
    data: str | os.PathLike | Sequence[str],
    out: str | os.PathLike,
    version: str,
    folds: int = FOLDS,
    epochs: int = FINETUNE_EPOCHS,
    weak_share: float = FINETUNE_WEAK_SHARE,
    max_false_alarms: float | None = None,
    seed: int = STREAM_SEED,
    psds: bool = True,
    curated: bool = False,
    members: int = 1,
    weak_pooled: bool = FINETUNE_WEAK_POOLED,
) -> dict[str, Any]:
    """Fine-tunes a bundle's per-second model on strong labels and calibrates its tracker on them, cross-validated.

    Nested cross-validation over the folds. For each report fold ``f``: the per-second model is fine-tuned
    (:func:`finetune_seconds`) on the strong streams of the other folds, beside weak windows of ``data``'s
    training side; its tracker is calibrated on *out-of-fold* scores of those other folds (each fold ``r``
    scored by the model fine-tuned on every fold but ``f`` and ``r``); fold ``f``'s stream is then captioned by
    the daemon's chain (the TFLite model, as the daemon runs it). No figure of fold ``f`` comes from a model or
    a tracker that saw it. The bundle's own per-second model calibrated the same way (on the other folds) gives
    the calibration's share of the gain. The shipped bundle (``out``) is fine-tuned on every fold and
    calibrated on the out-of-fold scores of all of them.

    The curated streams the bundle's tracker was calibrated on before (:func:`train.timeline.evaluate_timeline`:
    two streams of scenes of the calibration half of ``data``'s grouped validation side, truth the clips' weak
    labels), scored by the model being calibrated, hold the end-delay bound (end delay p90 <= 3 s per class):
    strong labels cut a talk into events a second apart, where an end delay means little. With ``curated``
    their segment F1 counts too (the best micro F1 over both kinds of stream). Their report half stays unseen.

    With ``members`` > 1 every fine-tuning trains that many models (member 0 with the seed of a single
    model, the others with other seeds and so other weak windows) and averages their scores
    (:func:`average_models`): an ensemble that the daemon runs as one model.

    Returns:
      One JSON-ready dict: ``before`` (the bundle as it is), ``calibrated`` (its model, tracker calibrated on
      strong labels), ``fine_tuned`` (both), each pooled over the held-out folds, per fold and over folds; and
      the shipped bundle's path and settings.
    """
    import itertools
    import json
    import tempfile

    from pipeline.captions import write_atomic
    from pipeline.classifier import METADATA_NAME, load_classifier
    from pipeline.events import make_tracker
    from pipeline.labels import ClassMap
    from train import data as data_mod
    from train.timeline import calibrate, collect_scores, run_chain, write_tracker

    if folds < 3:
        raise ValueError(f"fit-strong needs at least 3 folds; got {folds}")
    if members < 1:
        raise ValueError(f"fit-strong needs at least one member model; got {members}")
    clf = load_classifier(model_dir, runtime="litert")
    if not clf.has_seconds or not (clf.path / "seconds.keras").is_file():
        raise ValueError(f"{clf.path} has no per-second Keras model (seconds.keras) to fine-tune")
    classes = tuple(clf.classes)
    class_map = ClassMap.from_metadata(clf.metadata["classes"])
    _, _, streams = bundle_streams(clf, strong_dir, folds, seed)
    clips, _ = data_mod.load_clips(data, short="pad")
    train_idx, _ = data_mod.grouped_split(clips.video_id, float(clf.metadata.get("training", {}).get(
        "hyperparameters", {}).get("val_fraction", 0.2)))
    weak_clips = clips.subset(train_idx)
    weak = (weak_clips.x, weak_clips.frames, weak_clips.targets(class_map))
    lookahead = params.EVENT_LOOKAHEAD_EMBEDDINGS
    seconds_keras = clf.path / "seconds.keras"
    everything = tuple(range(folds))
    from train.timeline import TARGET_END_DELAY_P90, make_stream, timeline_clips

    cal_clips, cal_y = timeline_clips(data, class_map, 0.2, "calibration")
    cur_streams = [make_stream(cal_clips, cal_y, seed=s) for s in (101, 102)]
    cur_truth = [st.labels for st in cur_streams]

    def tune(without: Sequence[int]) -> Any:
        keep = [k for k in everything if k not in without]
        base_seed = seed + 97 * len(without) + sum(11 ** k for k in without)
        return average_models([finetune_seconds(seconds_keras, [streams[k] for k in keep], weak, epochs,
                                                weak_share=weak_share, seed=base_seed + 7919 * m,
                                                weak_pooled=weak_pooled)
                               for m in range(members)])

    def cal(fold_list: Sequence[int], scores: Mapping[int, npt.NDArray], cur: Sequence[npt.NDArray]) -> dict[str, Any]:
        # The end-delay bound (p90 <= 3 s per class) holds on the curated streams, whose events are whole sounds.
        bound = (np.concatenate(list(cur)), np.concatenate(cur_truth))
        if curated:
            return calibrate(np.concatenate([scores[k] for k in fold_list] + list(cur)),
                             np.concatenate([streams[k].labels for k in fold_list] + cur_truth), classes,
                             max_false_alarms, max_end_delay_p90=TARGET_END_DELAY_P90, end_delay_on=bound)
        return calibrate(np.concatenate([scores[k] for k in fold_list]),
                         np.concatenate([streams[k].labels for k in fold_list]), classes, max_false_alarms,
                         max_end_delay_p90=TARGET_END_DELAY_P90, end_delay_on=bound)

    def figures(caps: list, scs: list) -> dict[str, Any]:
        return figures_over_folds(streams, caps, scs, classes, psds)

    result: dict[str, Any] = {
        "model": f"{clf.name}@{clf.version}", "folds": folds,
        "recipe": {"epochs": epochs, "learning_rate": FINETUNE_LEARNING_RATE, "weak_share": weak_share,
                   "members": members, "weak_pooled": weak_pooled,
                   "weak_windows_from": f"{len(weak_clips)} bal_train training-side clips",
                   "max_false_alarms": max_false_alarms},
        "protocol": ("nested: fold f is captioned by a model fine-tuned on the other folds, with a tracker "
                     "calibrated on their out-of-fold scores (each scored by a model that did not see it)"
                     + (" and on the curated calibration streams" if curated else ""))}
    tracker = make_tracker(clf)
    runs = [run_chain(clf, tracker, st) for st in streams]
    result["before"] = figures([r[0] for r in runs], [r[1] for r in runs])
    base = {k: collect_scores(clf, st, lookahead) for k, st in enumerate(streams)}
    base_cur = [collect_scores(clf, st, lookahead) for st in cur_streams]
    # Out-of-fold scores: oof[(f, r)] = fold r scored by the model fine-tuned without folds f and r.
    oof: dict[tuple[int, int], npt.NDArray] = {}
    for f, r in itertools.combinations(everything, 2):
        model = tune((f, r))
        oof[(f, r)] = seconds_scores(model, streams[r], lookahead)
        oof[(r, f)] = seconds_scores(model, streams[f], lookahead)
        _LOGGER.info("out-of-fold scores of folds %d and %d", f, r)
    caps_cal, sc_cal, caps_ft, sc_ft, settings_ft = [], [], [], [], []
    shipped_oof: dict[int, npt.NDArray] = {}
    with tempfile.TemporaryDirectory(prefix="audiocap-strong-") as tmp:
        for f in everything:
            rest = [k for k in everything if k != f]
            c, s = run_chain(clf, tracker_from_settings(clf, cal(rest, base, base_cur), lookahead), streams[f])
            caps_cal.append(c)
            sc_cal.append(s)
            model = tune((f,))
            settings = cal(rest, {r: oof[(f, r)] for r in rest},
                           [seconds_scores(model, st, lookahead) for st in cur_streams])
            fclf = load_classifier(_with_seconds(clf.path, Path(tmp) / f"fold{f}", model), runtime="litert")
            c, s = run_chain(fclf, tracker_from_settings(fclf, settings, lookahead), streams[f])
            shipped_oof[f] = s
            caps_ft.append(c)
            sc_ft.append(s)
            settings_ft.append({k: settings[k] for k in ("on", "off", "min_duration_s", "hold_s")})
            _LOGGER.info("fold %d: calibrated only %s, fine-tuned %s", f,
                         score_streams([streams[f]], [caps_cal[-1]], None, classes, False)["segment_f1"],
                         score_streams([streams[f]], [c], None, classes, False)["segment_f1"])
        result["calibrated"] = figures(caps_cal, sc_cal)
        result["fine_tuned"] = figures(caps_ft, sc_ft)
        result["fine_tuned"]["settings_per_fold"] = settings_ft
        # The shipped bundle: fine-tuned on every fold, calibrated on every fold's out-of-fold scores.
        final = tune(())
        bundle = _with_seconds(clf.path, Path(out), final)
    settings = cal(everything, shipped_oof, [seconds_scores(final, st, lookahead) for st in cur_streams])
    meta_path = bundle / METADATA_NAME
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["version"] = str(version)
    meta.setdefault("seconds", {})["strong_finetune"] = {
        "from": f"{clf.name}@{clf.version}",
        "trained_on": (f"the strong frame targets of all {len(streams)} folds of {Path(strong_dir).name} and, "
                       f"{weak_share:g} x as many per epoch, "
                       + (f"whole clips of {len(weak_clips)} bal_train training-side clips (each judged by "
                          "its pooled seconds against its labels)" if weak_pooled else
                          f"windows of synthetic scenes of {len(weak_clips)} bal_train training-side clips "
                          "(each second carrying its clip's labels)")),
        **result["recipe"],
        "command": "audiocap-train fit-strong",
    }
    write_atomic(meta_path, json.dumps(meta, indent=2) + "\n")
    keep = ("segment_f1", "segment_error_rate", "event_onset_f1", "event_onset_offset_f1", "false_alarm_share",
            "captions", "false_alarms", "events", "missed", "over_folds")
    write_tracker(bundle, settings, lookahead, {
        "calibrated_on": (f"natural streams of all {len(streams)} folds of {Path(strong_dir).name} (truth: strong "
                          "labels on the 0.96-s grid), each scored by the per-second model fine-tuned without it"
                          + (", and the 2 curated streams (seeds 101, 102) of the calibration half of bal_train's "
                             "grouped validation side (truth: weak clip labels)" if curated else "")
                          + ": best micro segment F1 over them" + ("" if max_false_alarms is None else
                                                                   f" with false alarms <= {max_false_alarms:.0%}")
                          + f", end delay p90 <= {TARGET_END_DELAY_P90:g} s per class on the curated streams "
                            "(seeds 101, 102) of the calibration half of bal_train's grouped validation side"),
        "timeline": {"calibration": {**settings["timeline"], "per_class": settings["per_class"]},
                     "strong_cross_validated": {k: result["fine_tuned"][k] for k in keep} | {
                         "psds": (result["fine_tuned"].get("psds") or {}).get("psds"),
                         "protocol": result["protocol"]}},
    })
    result["bundle"] = str(bundle)
    result["shipped_settings"] = {k: settings[k] for k in ("on", "off", "min_duration_s", "hold_s")}
    return result
