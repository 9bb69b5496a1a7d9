"""The caption timeline against strong labels: the truth it builds, its scores, and the shipped bundle on a real
natural stream of strong-labelled AudioSet clips."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline import params
from tests.helpers import SHARED
from train import strong
from train.timeline import Caption

STEP = params.EMBEDDING_SECONDS
STRONG = SHARED / "audioset" / "strong_dev"


def _made_set() -> strong.StrongSet:
    """Two clips of 10 and 5 embeddings; clip 0 has speech 1.0-3.0 s and a dog 2.0-2.4 s, clip 1 music from 0 s
    to its end, and speech that the clip is too short to hold."""
    x = np.zeros((2, 10, 128), np.uint8)
    x[1, :5] = 7
    clips = SimpleNamespace(x=x, frames=np.array([10, 5]), video_id=np.array(["a", "b"]))
    events = (((1.0, 3.0, "Male speech, man speaking"), (1.0, 3.0, "Speech"), (2.0, 2.4, "Dog"),
               (2.0, 2.4, "Animal")),
              ((0.0, 10.0, "Music"), (6.0, 8.0, "Speech")))
    return strong.StrongSet(clips, events)


def test_stream_truth_merges_ancestors_and_clips_to_the_played_span():
    names = [frozenset({"Speech", "Male speech, man speaking"}), frozenset({"Animal", "Dog"}), frozenset({"Music"})]
    st = strong.build_stream(_made_set(), names, [1, 0])
    assert len(st) == 15 and st.clip.tolist() == [1] * 5 + [0] * 10
    # Music plays the whole of clip 1 (4.8 s played of its 10 s); its speech at 6-8 s was never played.
    assert st.events[2] == ((0.0, 4.8),)
    # A speech row and its ancestor are one event; it starts 1.0 s into clip 0, which starts at 4.8 s.
    assert st.events[0] == ((5.8, 7.8),) and st.events[1] == ((6.8, 7.2),)
    # Grid: embedding i covers [0.96 i, 0.96 (i+1)); speech 5.8-7.8 covers embeddings 6 and 7 more than half.
    assert np.flatnonzero(st.labels[:, 0]).tolist() == [6, 7]
    assert np.flatnonzero(st.labels[:, 1]).tolist() == []  # 0.4 s of dog covers no embedding by half
    assert np.flatnonzero(st.labels[:, 2]).tolist() == [0, 1, 2, 3, 4]


def test_scores_of_made_captions():
    names = [frozenset({"Speech"}), frozenset({"Animal", "Dog"}), frozenset({"Music"})]
    st = strong.build_stream(_made_set(), names, [0, 1])  # speech 1-3 s, dog 2-2.4 s, music 9.6-14.4 s
    classes = ("Speech", "Animal", "Music")
    caps = [Caption(0, 1.0 / STEP, 3.0 / STEP), Caption(0, 12.0 / STEP, 13.0 / STEP),  # a hit and a false alarm
            Caption(2, 9.6 / STEP, 14.4 / STEP)]  # music exactly; the dog is missed
    r = strong.score_streams([st], [caps], None, classes, psds=False)
    assert (r["captions"], r["false_alarms"], r["events"], r["missed"]) == (3, 1, 3, 1)
    assert r["per_class"]["Speech"]["false_alarms"] == 1 and r["per_class"]["Animal"]["missed"] == 1
    # Onsets: speech and music hit within the collar, the dog is missed, the second speech caption is extra.
    assert r["event_onset_precision"] == pytest.approx(2 / 3, abs=1e-3)
    assert r["event_onset_recall"] == pytest.approx(2 / 3, abs=1e-3)
    # Segments (1 s): speech 1-3 s (2 segments) + 1 false segment (12-13 s); dog 1 segment missed; music 9.6-14.4 s
    # touches segments 9..14 (6). Hits 2 + 6, false 1, missed 1.
    assert r["segment_f1"] == pytest.approx(2 * 8 / (2 * 8 + 1 + 1), abs=1e-3)


def test_folds_are_by_video_and_stable():
    vids = [f"v{i}" for i in range(500)]
    f = strong.folds_of(vids + vids[:10])
    assert f[:10].tolist() == f[500:].tolist()
    counts = np.bincount(f[:500], minlength=strong.FOLDS)
    assert counts.min() > 60 and counts.max() < 140
    assert strong.folds_of(["v1", "v2"]).tolist() == f[1:3].tolist()



@pytest.mark.slow
def test_shipped_bundle_on_a_natural_strong_stream(tmp_path):
    """The CLI on all strong_dev clips: one JSON object on stdout, a picture, and figures within bounds."""
    if not (STRONG / strong.TFRECORD).is_file():
        pytest.skip(f"no strong-labelled clips at {STRONG}")
    png = tmp_path / "strong.png"
    proc = subprocess.run([sys.executable, "-m", "train", "timeline", "--strong", str(STRONG), "--runtime", "litert",
                           "--png", str(png)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout)
    assert r["stream"]["clips"] == 1380 and sum(r["stream"]["fold_clips"]) == 1380
    d = r["daemon"]
    assert len(d["folds"]) == strong.FOLDS
    # Every strong event and caption is counted once, whichever fold stream it is in.
    assert d["events"] == sum(f["events"] for f in d["folds"])
    assert d["captions"] == sum(f["captions"] for f in d["folds"])
    # The shipped model on the truth: well above chance, well below perfect (the targets of issue 19; perfect
    # captions on the 0.96-s grid give F1 0.946, ER 0.104). In sample, as shipped: 0.832 and 0.308 (0.8).
    assert 0.55 < d["segment_f1"] < 0.9
    assert 0.2 < d["segment_error_rate"] < 0.8
    assert 0.15 < d["event_onset_f1"] < 0.7
    assert 0.02 < d["false_alarm_share"] < 0.35
    assert 0 < d["missed"] < d["events"]
    assert 0.15 < d["psds"]["psds"] < 0.7
    assert set(d["psds"]["per_class"]) == {"Speech", "Animal", "Music", "Vehicle"}
    spread = d["over_folds"]["segment_f1"]
    assert spread["min"] <= d["segment_f1"] <= spread["max"] and spread["sd"] > 0
    assert png.stat().st_size > 20_000
    # The shipped bundle learned these clips (fit-strong): the output says so, with its
    # cross-validated figures, which are lower.
    assert r["in_sample"]["learned"] == ["its per-second model was fine-tuned on them",
                                         "its tracker was calibrated on them"]
    assert "in-sample" in proc.stderr
    assert r["in_sample"]["cross_validated"]["segment_f1"] < d["segment_f1"]
    assert strong.learned_from({"tracker": {"calibrated_on": "curated streams of bal_train"}}, STRONG) == []


def _shipped_and_fold0() -> tuple:
    """The shipped bundle (LiteRT) and the natural stream of fold 0 of the strong clips, truth in its classes."""
    if not (STRONG / strong.TFRECORD).is_file():
        pytest.skip(f"no strong-labelled clips at {STRONG}")
    from pipeline.classifier import load_classifier
    from pipeline.labels import ClassMap

    clf = load_classifier(runtime="litert")
    names = strong.class_names(ClassMap.from_metadata(clf.metadata["classes"]), SHARED / "audioset" /
                               "class_labels_indices.csv")
    return clf, strong.fold_streams(strong.load_strong(STRONG), names)[0]


@pytest.mark.slow
def test_fine_tuning_on_strong_frames_learns_them_and_the_bundle_runs_it(tmp_path):
    """Two epochs on one fold's strong frames: the per-second AP on those frames rises, and the bundle written
    with the new model gives the same scores in LiteRT as in Keras."""
    from pipeline.classifier import load_classifier
    from train.evaluate import average_precisions

    clf, st = _shipped_and_fold0()
    x, y = strong.stream_windows([st])
    last = params.WINDOW_EMBEDDINGS - 1
    before = np.nanmean(average_precisions(y[:, last], clf.predict_seconds(x)[:, last]))
    model = strong.finetune_seconds(clf.path / "seconds.keras", [st], epochs=2)
    tuned = strong._with_seconds(clf.path, tmp_path / "tuned", model)
    lite = load_classifier(tuned, runtime="litert")
    got = lite.predict_seconds(x[:512])
    assert np.max(np.abs(got - model.predict(x[:512], verbose=0))) < 1e-4
    after = np.nanmean(average_precisions(y[:, last], lite.predict_seconds(x)[:, last]))
    assert after > before + 0.02, (before, after)


def test_members_are_averaged_into_one_model_the_daemon_runs(tmp_path):
    """fit-strong --members: the ensemble is one Keras model whose scores are the members' mean, and the bundle
    written with it gives those scores in LiteRT (one interpreter call)."""
    import keras

    from pipeline.classifier import load_classifier

    clf = load_classifier(runtime="litert")
    a, b = (keras.saving.load_model(clf.path / "seconds.keras", compile=False) for _ in range(2))
    b.set_weights([w * 0.5 for w in b.get_weights()])  # a different member
    x = np.random.default_rng(4).integers(0, 256, (64, params.WINDOW_EMBEDDINGS, params.EMBEDDING_SIZE), np.uint8)
    want = (a.predict(x, verbose=0) + b.predict(x, verbose=0)) / 2
    assert np.max(np.abs(want - a.predict(x, verbose=0))) > 1e-2  # the members differ
    a.compile(optimizer="adam", loss="binary_crossentropy")  # as fine-tuning leaves a member: with its optimizer
    a.fit(x[:8], a.predict(x[:8], verbose=0), epochs=1, verbose=0)
    want = (a.predict(x, verbose=0) + b.predict(x, verbose=0)) / 2
    mean = strong.average_models([a, b])
    np.testing.assert_allclose(mean.predict(x, verbose=0), want, atol=1e-6)
    bundle = strong._with_seconds(clf.path, tmp_path / "mean", mean)
    lite = load_classifier(bundle, runtime="litert")
    assert np.max(np.abs(lite.predict_seconds(x) - np.clip(want, 0, 1))) < 1e-4
    # Two members' weights, not their optimizer state too (that would be ~3 x one member each).
    one = (clf.path / "seconds.keras").stat().st_size
    assert (bundle / "seconds.keras").stat().st_size < 2.5 * one


def test_the_pooled_weak_loss_scores_a_weak_clip_by_its_pooled_seconds():
    """Strong windows: mean cross-entropy over seconds and classes. Weak windows (targets 2 + label): one
    sure second (0.95) pools the clip near it (sum p^2 / sum p), so the clip's positive label costs little
    although nine seconds score 0.1."""
    p = np.full((2, 10, 2), 0.1, np.float32)
    p[1, 3, 0] = 0.95
    truth = np.zeros((2, 10, 2), np.float32)
    truth[0, :5, 0] = 1
    truth[1] = strong.WEAK_TARGET_OFFSET
    truth[1, :, 0] = strong.WEAK_TARGET_OFFSET + 1  # weak: class 0 in the clip, class 1 not
    got = np.asarray(strong.pooled_weak_loss(truth, p))
    t0, p0 = truth[0], p[0]
    pooled = (p[1] ** 2).sum(axis=0) / p[1].sum(axis=0)  # [0.536, 0.1]
    want = [-np.mean(t0 * np.log(p0) + (1 - t0) * np.log(1 - p0)),
            -np.mean([np.log(pooled[0]), np.log(1 - pooled[1])])]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # Per second, the same weak clip would pay for nine seconds of 0.1 under a positive label.
    per_second = -np.mean(np.log(p[1, :, 0]))
    assert got[1] < per_second / 2


@pytest.mark.slow
def test_pooled_weak_windows_teach_where_in_the_clip_the_sound_is():
    """Weak clips whose class sounds in two of their ten seconds (a loud pattern; the rest is the background of
    every clip): learned from the clips' labels alone, the pooled loss scores the background seconds of those
    clips lower than every-second targets do, and the sounding seconds high."""
    clf, st = _shipped_and_fold0()
    n_classes = len(clf.classes)
    rng = np.random.default_rng(5)

    def weak_clips(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        x = rng.integers(96, 160, (n, 10, 128), dtype=np.uint8)
        y = np.zeros((n, n_classes), np.uint8)
        where = np.zeros((n, 10), bool)
        for i in range(n // 2):  # the first half carry class 0 (Speech), in seconds k and k + 1
            k = rng.integers(0, 9)
            x[i, k:k + 2, :64], where[i, k:k + 2] = 250, True
            y[i, 0] = 1
        return x, np.full(n, 10), y, where

    x, frames, y, _ = weak_clips(2000)
    test_x, _, _, where = weak_clips(200)
    scores = {}
    for pooled in (True, False):
        model = strong.finetune_seconds(clf.path / "seconds.keras", [st], (x, frames, y), epochs=4,
                                        learning_rate=1e-3, weak_share=1.0, seed=1, weak_pooled=pooled)
        s = model.predict(test_x[:100], verbose=0)[..., 0]
        scores[pooled] = (s[where[:100]].mean(), s[~where[:100]].mean())
    (sound, background), (_, background_every) = scores[True], scores[False]
    assert sound > 0.5 and sound > background + 0.3, scores
    assert background < background_every - 0.2, scores


def test_calibration_bounds_the_end_delay_on_other_streams():
    """A class whose strong truth rewards a lingering caption: the bound, measured on streams where the sound
    really stops earlier, keeps the calibration from lingering there."""
    from train.timeline import calibrate

    n, period = 600, 30
    scores = np.full((n, 1), 0.1)
    strong_truth = np.zeros((n, 1), np.uint8)
    curated_truth = np.zeros((n, 1), np.uint8)
    for a in range(0, n - period, period):
        scores[a:a + 10], scores[a + 10:a + 15] = 0.9, 0.5  # a sound, then 5 s that score half
        strong_truth[a:a + 15] = 1  # the strong truth hears all 15 s
        curated_truth[a:a + 10] = 1  # on the other streams the sound stops after 10
    free = calibrate(scores, strong_truth, ["X"], max_end_delay_p90=None)
    bound = calibrate(scores, strong_truth, ["X"], end_delay_on=(scores, curated_truth))
    assert free["on"]["X"] <= 0.5 < bound["on"]["X"]
