"""The caption chain's per-second scoring: look-ahead alignment, stream start and end, any grouping."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import params
from pipeline.chain import CaptionChain, WindowScores
from pipeline.classifier import load_classifier
from pipeline.events import CaptionEvent, EventTracker
from pipeline.window import fill_window

STEP = params.EMBEDDING_SECONDS


@pytest.fixture(scope="module")
def clf():
    c = load_classifier(runtime="litert" if _has_litert() else "keras")
    if not c.has_seconds:
        pytest.skip("the shipped bundle has no per-second model")
    return c


def _has_litert() -> bool:
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        return False
    return True


def _emb(n: int, seed: int = 0) -> np.ndarray:
    # Smooth made "sounds": a random walk, so neighbouring seconds resemble each other as in real audio.
    rng = np.random.default_rng(seed)
    walk = np.cumsum(rng.normal(0, 12, (n, 128)), axis=0) + rng.integers(60, 200, 128)
    return np.clip(walk, 0, 255).astype(np.uint8)


def _tracker(clf, lookahead: int, window_classes=(), recent_context=None) -> EventTracker:
    on = {c: 0.3 for c in clf.classes}
    return EventTracker(clf.classes, on, {c: 0.2 for c in clf.classes}, scoring="seconds", lookahead=lookahead,
                        new_id=iter(f"e{i}" for i in range(10_000)).__next__, window_classes=window_classes,
                        recent_context=recent_context)


def _run(clf, e, groups, lookahead, window_classes=(), recent_context=None):
    chain = CaptionChain(clf, _tracker(clf, lookahead, window_classes, recent_context))
    out, i = [], 0
    for g in groups:
        out += chain.feed_embeddings(e[i : i + g], 1e9 + i * STEP, 0.0)
        i += g
    return out + chain.end_stream(0.0)


@pytest.mark.parametrize("lookahead", [0, 1, 3])
def test_each_second_is_scored_once_with_its_lookahead(clf, lookahead):
    e = _emb(23, seed=lookahead)
    out = _run(clf, e, [len(e)], lookahead)
    scores = [o for o in out if isinstance(o, WindowScores)]
    assert [s.index for s in scores] == list(range(len(e)))
    assert [s.t_start for s in scores] == pytest.approx([1e9 + i * STEP for i in range(len(e))])
    for s in scores:
        newest = min(s.index + lookahead, len(e) - 1)  # the tail has no more future
        window = fill_window(e[: newest + 1], pad="edge")
        want = clf.predict_seconds(window[None])[0, params.WINDOW_EMBEDDINGS - 1 - (newest - s.index)]
        np.testing.assert_array_equal(s.scores, want)


@pytest.mark.parametrize("lookahead", [0, 1])
def test_window_classes_take_the_clip_score_of_the_same_window(clf, lookahead):
    e = _emb(17, seed=9)
    named = (clf.classes[1], clf.classes[3])
    cols = [1, 3]
    plain = [o for o in _run(clf, e, [len(e)], lookahead) if isinstance(o, WindowScores)]
    mixed = [o for o in _run(clf, e, [5, 12], lookahead, window_classes=named) if isinstance(o, WindowScores)]
    assert [s.index for s in mixed] == list(range(len(e)))
    others = [c for c in range(len(clf.classes)) if c not in cols]
    for p, m in zip(plain, mixed):
        newest = min(m.index + lookahead, len(e) - 1)
        window = fill_window(e[: newest + 1], pad="edge")
        np.testing.assert_array_equal(m.scores[cols], clf.predict(window[None])[0, cols])
        np.testing.assert_array_equal(m.scores[others], p.scores[others])
    with pytest.raises(ValueError, match="unknown classes"):
        _tracker(clf, 1, window_classes=("Doorbell",))


@pytest.mark.parametrize("lookahead", [0, 1])
def test_recent_context_takes_the_higher_of_the_window_and_its_last_seconds(clf, lookahead):
    e = _emb(17, seed=11)
    named = (clf.classes[0], clf.classes[2], clf.classes[3])
    recent = {clf.classes[0]: 2, clf.classes[3]: 4}  # classes[2] keeps the plain window score
    window_only = [o for o in _run(clf, e, [17], lookahead, window_classes=named) if isinstance(o, WindowScores)]
    got = [o for o in _run(clf, e, [6, 11], lookahead, window_classes=named, recent_context=recent)
           if isinstance(o, WindowScores)]
    raised = 0
    for w, g in zip(window_only, got):
        newest = min(g.index + lookahead, len(e) - 1)
        seen = e[max(newest - 9, 0): newest + 1]
        for c, k in ((0, 2), (3, 4)):
            last = seen[-k:] if len(seen) >= k else np.concatenate([np.repeat(seen[:1], k - len(seen), 0), seen])
            alone = clf.predict(np.resize(last, (10, 128))[None])[0, c]  # the k seconds repeated to fill 10
            assert g.scores[c] == max(w.scores[c], alone)
            raised += alone > w.scores[c]
        assert g.scores[1] == w.scores[1] and g.scores[2] == w.scores[2]
    assert raised > 0  # the recent context did change some scores: the comparison above can fail
    with pytest.raises(ValueError, match="not window classes"):
        _tracker(clf, 1, window_classes=named[:1], recent_context={clf.classes[3]: 2})
    for bad in (0, 10, 2.5, True):
        with pytest.raises(ValueError, match="whole number of embeddings"):
            _tracker(clf, 1, window_classes=named, recent_context={clf.classes[0]: bad})


@pytest.mark.parametrize("groups", [[1] * 31, [4, 9, 1, 17], [31]])
def test_per_second_outputs_do_not_depend_on_grouping(clf, groups):
    e = _emb(31, seed=5)
    ref = _run(clf, e, [31], 1)
    got = _run(clf, e, groups, 1)
    assert [type(o) for o in got] == [type(o) for o in ref]
    for a, b in zip(got, ref):
        if isinstance(a, WindowScores):
            assert a.index == b.index and np.array_equal(a.scores, b.scores)
        else:  # the end of the stream is where the last block says it ends: equal to float rounding
            assert (a.event_id, a.type, a.label, a.score, a.start) == (b.event_id, b.type, b.label, b.score, b.start)
            assert a.end == pytest.approx(b.end, abs=1e-6)
    assert any(isinstance(o, CaptionEvent) for o in ref), "the made stream should caption something"


def test_a_window_tracker_is_refused_nothing_and_a_seconds_tracker_needs_seconds(clf):
    chain = CaptionChain(clf, EventTracker(clf.classes, {c: 0.5 for c in clf.classes}))
    assert not chain.per_second and chain.latency_seconds == 0
    out = chain.feed_embeddings(_emb(3), 0.0, 0.0)
    assert [o.index for o in out if isinstance(o, WindowScores)] == [0, 1, 2]

    class NoSeconds:
        classes = clf.classes
        has_seconds = False

    with pytest.raises(ValueError, match="per-second model"):
        CaptionChain(NoSeconds(), _tracker(clf, 1))


def test_audio_scores_carry_the_level_of_their_own_second(clf, vggish_model, pca_path):
    from pipeline.embedder import Embedder
    from pipeline.postprocess import Postprocessor

    post = Postprocessor(pca_path)
    chain = CaptionChain(clf, _tracker(clf, 1), make_embedder=lambda rate: Embedder(vggish_model, post, rate))
    rate = 16000
    t = np.arange(int(6 * STEP * rate)) / rate
    x = 0.25 * np.sin(2 * np.pi * 1000 * t)
    x[int(3 * STEP * rate):] = 0.0  # three seconds of tone, then digital silence
    out = []
    for i in range(0, len(x), 1600):
        out += chain.feed_audio(x[i:i + 1600].astype(np.float32), rate, 1e9 + i / rate, 0.0)
    out += chain.end_stream(0.0)
    levels = {o.index: o.level_dbfs for o in out if isinstance(o, WindowScores)}
    assert sorted(levels) == list(range(5))  # 5.76 s hold five whole 0.975-s examples
    tone = 20 * np.log10(0.25 / np.sqrt(2))
    assert [round(levels[i], 2) for i in range(3)] == [round(tone, 2)] * 3
    assert [levels[i] for i in range(3, 5)] == [params.LEVEL_FLOOR_DBFS] * 2
    # Embeddings carry no audio, so their scores have no level.
    chain = CaptionChain(clf, _tracker(clf, 1))
    scored = [o for o in chain.feed_embeddings(_emb(4), 1e9, 0.0) if isinstance(o, WindowScores)]
    assert scored and all(o.level_dbfs is None for o in scored)
