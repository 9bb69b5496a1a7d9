"""The caption timeline: its scoring on made captions, its calibration search, and the real daemon on a real stream."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pipeline import params
from pipeline.events import EventTracker
from train import scenes, timeline
from train.timeline import Caption

STEP = params.EMBEDDING_SECONDS


def test_score_timeline_on_made_captions():
    truth = np.zeros((40, 2), np.uint8)
    truth[10:20, 0] = 1  # one Speech event, embeddings 10..19
    truth[25:35, 1] = 1  # one Music event
    caps = [Caption(0, 11, 22), Caption(0, 30, 32), Caption(1, 24, 33)]
    m = timeline.score_timeline(truth, caps, ("Speech", "Music"))
    sp, mu = m["per_class"]["Speech"], m["per_class"]["Music"]
    # Speech: 9 of 10 embeddings hit, 2 + 2 extra -> F1 = 18 / (18 + 4 + 1)
    assert sp["segment_f1"] == round(18 / 23, 4)
    assert (sp["start_delay_p50"], sp["end_delay_p50"]) == (round(STEP, 3), round(2 * STEP, 3))
    assert (sp["captions"], sp["false_alarms"], sp["missed"]) == (2, 1, 0)
    assert (mu["start_delay_p50"], mu["end_delay_p50"]) == (round(-STEP, 3), round(-2 * STEP, 3))
    assert m["false_alarm_share"] == round(1 / 3, 4)
    assert timeline.score_timeline(truth, [], ("Speech", "Music"))["missed"] == 2


def test_scene_intervals_bootstrap_the_scenes():
    rng = np.random.default_rng(0)
    scene = np.repeat(np.arange(60), 10)  # 60 scenes of 10 embeddings
    truth = np.zeros((600, 2), np.uint8)
    for k in range(60):
        if k % 3:
            truth[10 * k : 10 * k + 10, k % 3 - 1] = 1
    exact = [Caption(c, a, b) for c in (0, 1) for a, b in timeline._runs(truth[:, c] > 0)]
    iv = timeline.scene_intervals(truth, exact, scene, draws=200)
    assert iv["segment_f1"] == [1.0, 1.0] and iv["false_alarm_share"] == [0.0, 0.0]
    assert iv["method"] == "bootstrap over the stream's 60 scenes (200 draws)"
    # Noisy captions: every true event captioned a little late, plus false alarms in scenes of nothing.
    noisy = [Caption(c, a + rng.integers(0, 4), b) for c in (0, 1) for a, b in timeline._runs(truth[:, c] > 0)]
    noisy += [Caption(0, 10 * k + 2, 10 * k + 5) for k in range(0, 60, 6)]
    point = timeline.score_timeline(truth, noisy, ("a", "b"))
    iv = timeline.scene_intervals(truth, noisy, scene, draws=500)
    lo, hi = iv["segment_f1"]
    assert lo < point["segment_f1"] < hi and hi - lo < 0.2
    lo, hi = iv["false_alarm_share"]
    assert lo < point["false_alarm_share"] < hi
    # Four times the scenes (the same pattern again): a narrower interval.
    wide = timeline.scene_intervals(np.tile(truth, (4, 1)), [Caption(cp.cls, cp.start + 600 * r, cp.end + 600 * r)
                                                           for r in range(4) for cp in noisy],
                                    np.concatenate([scene + 60 * r for r in range(4)]), draws=500)
    assert wide["segment_f1"][1] - wide["segment_f1"][0] < 0.7 * (iv["segment_f1"][1] - iv["segment_f1"][0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_calibration_search_runs_the_trackers_state_machine(seed):
    rng = np.random.default_rng(seed)
    s = np.clip(np.cumsum(rng.normal(0, 0.15, 600)) % 1.0, 0, 1)
    for on, off, min_n, hold_n in [(0.6, 0.48, 2, 3), (0.5, 0.5, 1, 1), (0.7, 0.35, 4, 2)]:
        tr = EventTracker(("x",), {"x": on}, {"x": off}, None, min_n * STEP, hold_n * STEP)
        ref = []
        evs = [e for i, x in enumerate(s) for e in tr.update(i * STEP, (i + 1) * STEP, [x])] + tr.finish(len(s) * STEP)
        ref = [(round(e.start / STEP), round(e.end / STEP)) for e in evs if e.type == "end"]
        assert timeline.simulate_tracker(s.tolist(), on, off, min_n, hold_n) == ref


# Bounds on the report stream of docs/timeline.md (seed 0, 90 minutes). The
# daemon before per-second captions gave there segment F1 0.622, start delay
# p50 1.92 s and end delays p50/p90 6.72/11.4 s, which these bounds refuse;
# the margins allow a few embeddings to flip on another CPU's arithmetic.
# 0.6 follows the strong labels more closely and the weak ones less (0.705,
# inside the 90 % interval of 0.4's 0.730: 0.699-0.759); 0.7 a little more
# (0.697, 40.3 % false alarms, 21 misses against the baseline's 19); 0.8 holds
# its tracker to fewer false alarms on the strong truth and captions less here
# (0.693, 35.1 % false alarms, 28 misses): docs/timeline.md. The miss bound is
# against a tracker that stays silent, which misses most of the 217 events.
MIN_SEGMENT_F1 = 0.69
MAX_START_DELAY_P50 = 1.5
MAX_END_DELAY_P50 = 1.0
MAX_END_DELAY_P90 = 3.0
MAX_FALSE_ALARM_SHARE = 0.42
MAX_EXTRA_MISSES = 10
"""Misses beyond those of the clip-aligned baseline on the same stream."""


@pytest.fixture(scope="module")
def report_clips(bal_train_dir):
    """The shipped bundle and the clips of the report half of the grouped validation split."""
    pytest.importorskip("tensorflow")
    from pipeline.classifier import load_classifier
    from pipeline.labels import ClassMap

    clf = load_classifier()
    clips, y = timeline.timeline_clips(bal_train_dir, ClassMap.from_metadata(clf.metadata["classes"]), half="report")
    return clf, clips, y


@pytest.mark.slow
def test_audiocapd_replay_of_an_unseen_stream_follows_the_sound(report_clips, tmp_path):
    """`audiocapd --source replay:DIR --sink vtt:out.vtt` with the default config, on clips of the
    report half of the validation split (neither the model nor the tracker was tuned on them)."""
    clf, clips, y = report_clips
    stream = timeline.make_stream(clips, y, seed=0)
    replay = tmp_path / "replay"
    timeline.write_stream_tfrecords(stream, clips, replay)
    vtt = tmp_path / "out.vtt"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-m", "daemon", "--source", f"replay:{replay}", "--sink", f"vtt:{vtt}",
                           "--pace", "fast", "--exit-at-end"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from pipeline.events import DEFAULT_CAPTIONS

    caps = timeline.read_vtt(vtt, clf.classes, DEFAULT_CAPTIONS)
    m = timeline.score_timeline(stream.labels, caps, clf.classes)
    summary = {k: m[k] for k in ("segment_f1", "start_delay_p50", "end_delay_p50", "end_delay_p90",
                                 "false_alarm_share", "missed", "events", "captions")}
    print(json.dumps(summary))
    assert m["events"] > 100 and m["captions"] > 50
    assert m["segment_f1"] >= MIN_SEGMENT_F1, summary
    assert m["start_delay_p50"] <= MAX_START_DELAY_P50, summary
    assert m["end_delay_p50"] <= MAX_END_DELAY_P50, summary
    assert m["end_delay_p90"] <= MAX_END_DELAY_P90, summary
    assert m["false_alarm_share"] <= MAX_FALSE_ALARM_SHARE, summary
    baseline = timeline.score_timeline(stream.labels, timeline.clip_aligned(clf, clips, stream)[0], clf.classes)
    assert m["missed"] <= baseline["missed"] + MAX_EXTRA_MISSES, (summary, baseline["missed"])


@pytest.mark.slow
def test_keras_and_litert_give_identical_captions(report_clips):
    pytest.importorskip("ai_edge_litert")
    from pipeline.classifier import load_classifier
    from pipeline.events import make_tracker

    _, clips, y = report_clips
    keras_clf, litert_clf = load_classifier(runtime="keras"), load_classifier(runtime="litert")
    assert keras_clf.metadata["seconds"].get("keras"), "the Keras runtime should run the bundle's own Keras model"
    stream = timeline.make_stream(clips, y, seed=3, max_scenes=30)
    caps_k, scores_k = timeline.run_chain(keras_clf, make_tracker(keras_clf), stream)
    caps_l, scores_l = timeline.run_chain(litert_clf, make_tracker(litert_clf), stream)
    assert make_tracker(keras_clf).scoring == "seconds"
    assert np.nanmax(np.abs(scores_k - scores_l)) < 1e-4
    def edges(caps):
        return [(c.cls, c.start, c.end, c.shown, c.gone) for c in caps]

    assert len(caps_l) > 5 and edges(caps_k) == edges(caps_l)


def test_streams_of_a_large_class_set_go_on_when_a_rare_kind_runs_out():
    rng = np.random.default_rng(0)
    y = np.zeros((60, 5), np.uint8)
    y[:2, 4] = 1  # a rare class: two clips
    y[2:40, 0] = 1
    y[40:50, 1] = 1  # the rest: other classes or none
    x = rng.integers(0, 255, (60, 10, 128), dtype=np.uint8)
    frames = np.full(60, 10)
    short = scenes.build_stream(x, frames, y, np.random.default_rng(1))
    long = scenes.build_stream(x, frames, y, np.random.default_rng(1), exhaust=True)
    assert len(np.unique(long.clip)) > len(np.unique(short.clip))
    assert (long.labels[:, 4].sum() == 20) and set(np.unique(long.clip)) >= {0, 1}  # both rare clips played
    assert all(a != b for a, b in zip(long.kinds[:-1], long.kinds[1:]))  # still no scene follows its own kind
    assert len(set(long.clip.tolist())) == len(long.clip) // 10  # each clip at most once


def test_mixed_streams_play_clips_with_several_classes_in_their_rarest_class_scenes():
    rng = np.random.default_rng(0)
    y = np.zeros((80, 3), np.uint8)
    y[:40, 0] = 1  # a common class
    y[40:50, 1] = 1
    y[50:56, 2] = 1  # a rare class ...
    y[56:62, [0, 2]] = 1  # ... mostly heard with the common one
    y[62:66, [0, 1]] = 1
    kinds = scenes.clip_kinds(y, mixed=True)
    assert (kinds[56:62] == 2).all() and (kinds[62:66] == 1).all()
    assert (scenes.clip_kinds(y)[56:66] == scenes.MIXED).all()
    x = rng.integers(0, 255, (80, 10, 128), dtype=np.uint8)
    frames = np.full(80, 10)
    plain = scenes.build_stream(x, frames, y, np.random.default_rng(1), exhaust=True)
    mixed = scenes.build_stream(x, frames, y, np.random.default_rng(1), exhaust=True, mixed=True)
    assert not set(plain.clip.tolist()) & set(range(56, 66))
    assert set(range(56, 66)) <= set(mixed.clip.tolist())
    # Every embedding carries all its clip's classes.
    assert (mixed.labels == y[mixed.clip]).all()
    assert mixed.labels[:, 2].sum() == 12 * 10
    # The timeline's streams of a class set beyond the four are mixed by default; the four's are not.
    from types import SimpleNamespace

    clips = SimpleNamespace(x=x, frames=frames)
    big = np.zeros((80, 5), np.uint8)
    big[:, :3] = y
    assert set(range(56, 66)) <= set(timeline.make_stream(clips, big, seed=1).clip.tolist())
    four = np.zeros((80, 4), np.uint8)
    four[:, :3] = y
    assert not set(timeline.make_stream(clips, four, seed=1).clip.tolist()) & set(range(56, 66))


def _speech_and_alarm(rng, n, candidates, events, length, alarm_noise):
    """A 2-class timeline: Speech 20 of every 60 embeddings, well scored; ``events`` alarms of ``length``
    starting at some of ``candidates``, whose per-second score is noise up to ``alarm_noise``."""
    truth = np.zeros((n, 2), np.uint8)
    for a in range(0, n, 60):
        truth[a : a + 20, 0] = 1
    starts = rng.choice(candidates, events, replace=False)
    truth[starts[:, None] + np.arange(length), 1] = 1
    scores = np.zeros((n, 2), np.float32)
    scores[:, 0] = np.clip(truth[:, 0] * 0.6 + rng.normal(0.2, 0.1, n), 0, 1)
    scores[:, 1] = rng.uniform(0, alarm_noise, n)
    return truth, scores, starts


def test_calibration_keeps_urgent_classes_on_within_their_false_alarm_budget():
    # Alarm's per-second scores say nothing about it; its window scores do (as for a knock, which
    # the 10-s window model hears best). The micro-F1 search would turn it off; as an urgent class
    # it stays on, takes the window scores, and keeps within its false alarms per hour. (No class is
    # turned off unless the search is allowed to.)
    rng = np.random.default_rng(3)
    n = 12000
    truth, scores, _ = _speech_and_alarm(rng, n, np.arange(0, n - 10, 40), 40, 5, 0.8)
    window = scores.copy()
    window[:, 1] = np.clip(truth[:, 1] * 0.5 + rng.uniform(0, 0.45, n), 0, 1)
    hours = n * STEP / 3600
    plain = timeline.calibrate(scores, truth, ("Speech", "Alarm"), max_false_alarms=0.2, allow_off=True)
    assert plain["per_class"]["Alarm"]["captions"] == 0  # off, or a setting that never fires
    assert timeline.calibrate(scores, truth, ("Speech", "Alarm"), max_false_alarms=0.2)["on"]["Alarm"] < 1.0
    only_seconds = timeline.calibrate(scores, truth, ("Speech", "Alarm"), max_false_alarms=0.2, urgent=("Alarm",))
    urgent = timeline.calibrate(scores, truth, ("Speech", "Alarm"), max_false_alarms=0.2, urgent=("Alarm",),
                                window_scores=window, urgent_max_false_alarms_per_hour=2.0)
    for r in (only_seconds, urgent):
        assert r["on"]["Alarm"] < timeline.NEVER_ON and r["per_class"]["Alarm"]["captions"] > 0
        assert r["min_duration_s"]["Alarm"] == round(STEP, 4)
        assert r["on"]["Speech"] == plain["on"]["Speech"] and r["source"]["Speech"] == "seconds"
    assert only_seconds["source"]["Alarm"] == "seconds"
    assert urgent["source"]["Alarm"] == "window"
    assert urgent["per_class"]["Alarm"]["false_alarms"] <= 2.0 * hours
    assert urgent["per_class"]["Alarm"]["segment_f1"] > 0.5 > only_seconds["per_class"]["Alarm"]["segment_f1"]


def test_an_urgent_class_takes_a_recent_context_that_hears_the_sound_sooner(tmp_path):
    # The window score of an alarm rises only once the alarm fills half the window; the score of the
    # last 2 seconds alone rises at once, at the price of a few more noisy seconds. The calibration
    # picks the raised source for the urgent class (never for the others), and the bundle's tracker
    # then names it, for the chain to build.
    rng = np.random.default_rng(4)
    n = 12000
    truth, scores, starts = _speech_and_alarm(rng, n, np.arange(30, n - 30, 60), 50, 12, 0.5)
    late = truth[:, 1].copy()
    late[starts[:, None] + np.arange(5)] = 0  # the 10-s window hears it from its 6th second
    window = scores.copy()
    window[:, 1] = np.clip(late * 0.5 + rng.uniform(0, 0.45, n), 0, 1)
    recent = window.copy()
    recent[:, 1] = np.maximum(window[:, 1], np.clip(truth[:, 1] * 0.6 + rng.uniform(0, 0.35, n), 0, 1))
    recent[:, 0] = rng.uniform(0, 1, n)  # would wreck Speech if it could take it
    res = timeline.calibrate(scores, truth, ("Speech", "Alarm"), urgent=("Alarm",), window_scores=window,
                             recent_scores={2: recent})
    without = timeline.calibrate(scores, truth, ("Speech", "Alarm"), urgent=("Alarm",), window_scores=window)
    assert res["source"] == {"Speech": "seconds", "Alarm": "window+recent2"}
    assert without["source"]["Alarm"] == "window"
    assert res["per_class"]["Alarm"]["segment_f1"] > without["per_class"]["Alarm"]["segment_f1"] + 0.1
    meta = tmp_path / "metadata.json"
    meta.write_text(json.dumps({"name": "x"}))
    timeline.write_tracker(tmp_path, res, 1, {})
    tracker = json.loads(meta.read_text())["tracker"]
    assert tracker["window_classes"] == ["Alarm"] and tracker["recent_context"] == {"Alarm": 2}
