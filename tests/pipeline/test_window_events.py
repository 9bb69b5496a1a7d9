"""Rolling window and event tracker: pure units on made data."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import params
from pipeline.events import EventTracker
from pipeline.window import RollingWindow, fill_window

STEP = params.EMBEDDING_SECONDS
CLASSES = ("Speech", "Animal", "Music", "Vehicle")


def _emb(k: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (k, 128), dtype=np.uint8)


# --- window ------------------------------------------------------------------------------

def test_fill_window_tiles_partial_and_keeps_last_ten():
    e = _emb(13)
    assert np.array_equal(fill_window(e[:1]), np.repeat(e[:1], 10, axis=0))
    w3 = fill_window(e[:3])
    assert np.array_equal(w3, e[[0, 1, 2, 0, 1, 2, 0, 1, 2, 0]])
    assert np.array_equal(fill_window(e), e[3:])
    with pytest.raises(ValueError, match="zero embeddings"):
        fill_window(e[:0])
    with pytest.raises(ValueError, match="uint8"):
        fill_window(e.astype(np.float32))


def test_rolling_window_one_window_per_embedding_whatever_the_grouping():
    e = _emb(25, seed=1)
    ref_w = RollingWindow()
    idx_all, win_all = ref_w.process(e)
    assert list(idx_all) == list(range(25))
    for groups in ([1] * 25, [3, 7, 15], [10, 10, 5]):
        w = RollingWindow()
        got_i, got_w = [], []
        start = 0
        for g in groups:
            i, ws = w.process(e[start : start + g])
            got_i += list(i)
            got_w.append(ws)
            start += g
        assert got_i == list(idx_all)
        assert np.array_equal(np.concatenate(got_w), win_all)
    assert np.array_equal(win_all[-1], e[-10:])
    assert np.array_equal(win_all[0], np.repeat(e[:1], 10, axis=0))


def test_rolling_window_min_embeddings_and_reset():
    w = RollingWindow(min_embeddings=10)
    i, ws = w.process(_emb(9))
    assert ws.shape == (0, 10, 128)
    i, ws = w.process(_emb(2, seed=5))
    assert list(i) == [9, 10]
    w.reset()
    assert w.embeddings_seen == 0


# --- events ------------------------------------------------------------------------------

def _run(tracker: EventTracker, seq: list[float], cls: int = 2, t0: float = 1000.0) -> list[CaptionEvent]:
    out = []
    for i, s in enumerate(seq):
        scores = np.zeros(4)
        scores[cls] = s
        out += tracker.update(t0 + i * STEP, t0 + (i + 1) * STEP, scores)
    return out


def _tracker(**kw) -> EventTracker:
    counter = iter(range(1000))
    return EventTracker(CLASSES, {c: 0.5 for c in CLASSES}, new_id=lambda: f"id{next(counter)}", **kw)


def test_event_needs_min_duration_and_ends_after_hold():
    tr = _tracker()
    # one window above: too short (min 1 s > 0.96 s), dropped silently
    assert _run(tr, [0.9, 0.1, 0.1]) == []
    tr = _tracker()
    ev = _run(tr, [0.1, 0.9, 0.6, 0.45, 0.3, 0.3, 0.3, 0.1])
    assert [(e.type, e.label) for e in ev] == [("start", "Music"), ("end", "Music")]
    start, end = ev
    assert start.start == pytest.approx(1000 + 1 * STEP)  # where the score first crossed "on"
    assert start.event_id == end.event_id
    # 0.45 is above off (0.4): still on; below off from window 4; hold 2 s -> 3 windows
    assert end.end == pytest.approx(1000 + 4 * STEP)
    assert end.score == pytest.approx(0.9)
    assert tr.active["Music"] is False


def test_hold_is_cancelled_by_a_return_above_off():
    tr = _tracker()
    ev = _run(tr, [0.9, 0.9, 0.1, 0.9, 0.1, 0.1, 0.1, 0.1])
    assert [e.type for e in ev] == ["start", "end"]
    assert ev[1].end == pytest.approx(1000 + 4 * STEP)


def test_finish_ends_open_events_and_thresholds_validate():
    tr = _tracker(off_thresholds={"Music": 0.2}, captions={"Music": "[Musik]"})
    ev = _run(tr, [0.9, 0.9, 0.3])
    assert [e.type for e in ev] == ["start"] and ev[0].caption == "[Musik]"
    assert tr.active["Music"]
    fin = tr.finish(2000.0)
    assert [(e.type, e.end) for e in fin] == [("end", 2000.0)]
    assert tr.finish(2001.0) == []
    with pytest.raises(ValueError, match="off <= on"):
        EventTracker(CLASSES, {c: 0.5 for c in CLASSES}, off_thresholds={"Speech": 0.7})
    with pytest.raises(ValueError, match="no on threshold"):
        EventTracker(CLASSES, {"Speech": 0.5})


def test_edge_padding_keeps_the_newest_at_the_end():
    e = _emb(3)
    w = fill_window(e, pad="edge")
    assert np.array_equal(w[7:], e) and all(np.array_equal(w[i], e[0]) for i in range(7))
    assert np.array_equal(fill_window(_emb(12), pad="edge"), fill_window(_emb(12)))
    with pytest.raises(ValueError, match="pad must be"):
        fill_window(e, pad="zero")
    i, ws = RollingWindow(pad="edge").process(e)
    assert list(i) == [0, 1, 2] and np.array_equal(ws[1][-2:], e[:2]) and np.array_equal(ws[1][0], e[0])


def test_per_class_timings():
    tr = EventTracker(("A", "B"), {"A": 0.5, "B": 0.5}, min_duration={"A": 0.0, "B": 2 * STEP}, hold={"A": 0.0})
    assert tr.timings() == {"A": (0.0, 0.0), "B": (2 * STEP, params.EVENT_HOLD_SECONDS)}
    evs = tr.update(0.0, STEP, [0.9, 0.9])
    assert [(e.type, e.label) for e in evs] == [("start", "A")]  # A needs no second embedding
    evs = tr.update(STEP, 2 * STEP, [0.1, 0.9])
    assert [(e.type, e.label, e.end) for e in evs] == [("end", "A", STEP), ("start", "B", None)]
    with pytest.raises(ValueError, match="min_duration and hold"):
        EventTracker(("A",), {"A": 0.5}, hold={"A": -1.0})
    with pytest.raises(ValueError, match="scoring"):
        EventTracker(("A",), {"A": 0.5}, scoring="frames")


class _Bundle:
    """The attributes make_tracker reads from a loaded classifier bundle."""

    def __init__(self, tracker=None, has_seconds=True):
        self.classes = ("Speech", "Music")
        self.thresholds = {"Speech": 0.4, "Music": 0.6}
        self.metadata = {"tracker": tracker} if tracker else {}
        self.has_seconds = has_seconds
        self.name = "test-bundle"


def test_make_tracker_takes_the_calibrated_tracker_and_lets_the_config_override():
    cal = {"scoring": "seconds", "lookahead": 2, "on": {"Speech": 0.3, "Music": 0.7},
           "off": {"Speech": 0.15, "Music": 0.7}, "min_duration_s": {"Speech": 0.0, "Music": STEP},
           "hold_s": {"Speech": STEP, "Music": 0.0}}
    from pipeline.events import make_tracker

    tr = make_tracker(_Bundle(cal))
    assert (tr.scoring, tr.lookahead) == ("seconds", 2)
    assert tr.thresholds() == {"Speech": (0.3, 0.15), "Music": (0.7, 0.7)}
    assert tr.timings() == {"Speech": (0.0, STEP), "Music": (STEP, 0.0)}
    # A configured on threshold keeps the calibrated off/on ratio; explicit values win.
    tr = make_tracker(_Bundle(cal), on_thresholds={"Speech": 0.5}, lookahead_s=0.0, hold_s=3.0)
    assert tr.thresholds()["Speech"] == (0.5, 0.25) and tr.lookahead == 0
    assert tr.timings()["Music"] == (STEP, 3.0)
    # Window scoring uses the clip thresholds and the window defaults, not the per-second calibration.
    tr = make_tracker(_Bundle(cal), scoring="window")
    assert tr.scoring == "window" and tr.lookahead == 0
    assert tr.thresholds()["Music"] == (0.6, pytest.approx(0.6 * params.EVENT_OFF_RATIO))
    # No calibrated tracker: auto means window; asking for seconds without a per-second model fails.
    assert make_tracker(_Bundle()).scoring == "window"
    with pytest.raises(ValueError, match="per-second model"):
        make_tracker(_Bundle(cal, has_seconds=False), scoring="seconds")


def test_urgent_flags_and_loudest_level_ride_on_both_edges():
    tr = _tracker(urgent={"Music": True})
    assert tr.urgent_classes() == ("Music",)
    seq = [(0.1, -50.0), (0.9, -20.0), (0.6, -12.5), (0.45, -30.0), (0.3, -3.0), (0.3, -3.0), (0.3, -3.0), (0.1, -3.0)]
    out = []
    for i, (s, level) in enumerate(seq):
        scores = np.zeros(4)
        scores[2] = s
        out += tr.update(1000 + i * STEP, 1000 + (i + 1) * STEP, scores, level_dbfs=level)
    start, end = out
    assert start.urgent and end.urgent
    # The start knows the windows that started it; the end the loudest while above off (not the hold's).
    assert start.level_dbfs == -12.5 and end.level_dbfs == -12.5
    # Without audio the level stays unknown; classes not flagged are not urgent.
    ev = _run(_tracker(urgent={"Music": True}), [0.9, 0.9, 0.1, 0.1, 0.1], cls=0)
    assert ev and all(e.level_dbfs is None and not e.urgent for e in ev)
    with pytest.raises(ValueError, match="unknown classes"):
        _tracker(urgent={"Alarm": True})


def test_make_tracker_reads_recent_contexts_of_window_classes_and_names_a_bad_one():
    from pipeline.events import make_tracker

    cal = {"scoring": "seconds", "lookahead": 1, "on": {"Speech": 0.3, "Music": 0.7},
           "window_classes": ["Music"], "recent_context": {"Music": 3, "Speech": 2}}
    tr = make_tracker(_Bundle(cal))
    assert tr.window_classes == ("Music",) and tr.recent_context == {"Music": 3}  # Speech is not a window class
    assert make_tracker(_Bundle(cal), window_classes=()).recent_context == {}
    assert make_tracker(_Bundle(cal), scoring="window").recent_context == {}
    with pytest.raises(ValueError, match="recent_context of 'Music' must be a whole number of embeddings"):
        make_tracker(_Bundle({**cal, "recent_context": {"Music": "three"}}))


def test_make_tracker_takes_captions_and_urgent_flags_from_the_bundle():
    from pipeline.events import make_tracker

    b = _Bundle()
    b.captions = {"Speech": "[Talking]", "Music": "[Music]"}
    b.urgent = {"Speech": True}
    tr = make_tracker(b, captions={"Music": "[Tune]"})
    assert tr.caption_texts()["Speech"] == "[Talking]" and tr.caption_texts()["Music"] == "[Tune]"
    assert tr.urgent_classes() == ("Speech",)


def test_level_meter_measures_each_stretch_whatever_the_blocks():
    from pipeline.audio import LevelMeter, level_dbfs

    rate = 44100
    t = np.arange(int(3.2 * rate)) / rate
    x = 0.5 * np.sin(2 * np.pi * 440 * t)
    x[int(0.96 * rate):int(1.92 * rate)] = 0.0  # stretch 1 is silence
    levels = []
    for sizes in ([4410], [1, 997, 44100, 13], [len(x)]):
        m = LevelMeter(rate)
        pos, k = 0, 0
        while pos < len(x):
            n = sizes[k % len(sizes)]
            m.add((x[pos:pos + n] * 32767).astype(np.int16))
            pos, k = pos + n, k + 1
        levels.append([m.level(i) for i in range(4)])
    assert levels[0] == levels[1] == levels[2]
    sine_db = 20 * np.log10(0.5 / np.sqrt(2))  # a sine's RMS is its amplitude / sqrt(2)
    assert levels[0][0] == pytest.approx(sine_db, abs=0.01)
    assert levels[0][1] == params.LEVEL_FLOOR_DBFS
    assert levels[0][2] == pytest.approx(sine_db, abs=0.01)
    assert levels[0][3] == pytest.approx(sine_db, abs=0.05)  # the part heard of the last stretch
    assert level_dbfs(0.0, 0) == params.LEVEL_FLOOR_DBFS and level_dbfs(4.0, 4) == 0.0
