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
