"""The shipped home-alerts bundle: its class set, its validation figures against the pooled
logistic-regression baseline fitted in the same run, and its two runtimes."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import classifier, params

ALERTS = ("Alarm", "Doorbell or knock", "Baby crying", "Water running")


@pytest.fixture(scope="module")
def home():
    return classifier.load_classifier("audiocap-home", runtime="litert")


def test_the_home_bundle_records_its_class_set(home):
    assert home.classes == (*params.CLASS_NAMES, *ALERTS)
    assert home.urgent == {**{c: False for c in params.CLASS_NAMES}, "Alarm": True, "Doorbell or knock": True,
                           "Baby crying": True, "Water running": False}
    assert home.metadata["class_set"] == {"name": "home", "file": "pipeline/classsets/home.toml"}
    assert home.has_seconds and home.metadata["tracker"]["scoring"] == "seconds"
    # The default bundle is unchanged by it.
    assert classifier.load_classifier().classes == params.CLASS_NAMES


def test_home_bundle_figures_reproduce_and_beat_the_baseline(bal_train_dir, home):
    from train.evaluate import evaluate_bundle

    r = evaluate_bundle("audiocap-home", bal_train_dir, runtime="litert", split="val", baseline=True)
    assert r["mAP"] == pytest.approx(home.metadata["metrics"]["mAP"], abs=1e-4)
    assert r["four_class_mAP"] >= 0.74, r["four_class_mAP"]
    margin = r["ap_over_baseline"]
    # The target is +0.10 AP over the baseline per alert class: met by these three...
    for name in ("Alarm", "Doorbell or knock", "Baby crying"):
        assert margin[name] >= 0.10, (name, margin)
    # ...while Water running beats the baseline by less (docs/experiments.md says so).
    assert margin["Water running"] > 0, margin
    # How sure each margin is: a paired bootstrap over the validation clips, around the measured margin.
    interval = r["ap_over_baseline_interval"]["per_class"]
    for name in home.classes:
        lo, hi = interval[name]
        assert lo < margin[name] < hi, (name, interval[name], margin[name])
    # A class with 36 positives is far less sure than one with 1,728.
    width = {n: interval[n][1] - interval[n][0] for n in home.classes}
    assert width["Water running"] > 3 * width["Music"], width


def test_the_margin_interval_is_paired_and_follows_the_evidence():
    from train.evaluate import ap_margin_interval

    rng = np.random.default_rng(0)
    y = (rng.random((400, 2)) < 0.1).astype(int)
    noise = rng.random((400, 2))
    # The same scores on both sides: every draw gives a margin of exactly 0.
    assert ap_margin_interval(y, noise, noise, draws=200) == [(0.0, 0.0), (0.0, 0.0)]
    # A model that ranks every positive first against a random baseline: far above 0 on every draw.
    lo, hi = ap_margin_interval(y, y + 0.1 * noise, noise, draws=200)[0]
    assert 0.5 < lo < hi <= 1.0
    # A class without positives has no interval.
    assert ap_margin_interval(np.c_[y[:, 0], np.zeros(400, int)], noise, noise, draws=50)[1] is None


def test_keras_and_litert_agree_on_the_home_bundle(home):
    pytest.importorskip("tensorflow")
    keras = classifier.load_classifier("audiocap-home", runtime="keras")
    x = np.random.default_rng(0).integers(0, 256, (16, 10, 128), dtype=np.uint8)
    assert np.abs(keras.predict(x) - home.predict(x)).max() < 1e-4
    assert np.abs(keras.predict_seconds(x) - home.predict_seconds(x)).max() < 1e-4


def test_the_home_tracker_keeps_every_alert_on_and_hears_short_ones_with_the_window_model(home):
    from pipeline.events import make_tracker

    meta = home.metadata["tracker"]
    tracker = make_tracker(home)
    assert tracker.scoring == "seconds"
    assert tracker.window_classes == tuple(c for c in home.classes if c in meta["window_classes"])
    assert set(tracker.urgent_classes()) == {"Alarm", "Doorbell or knock", "Baby crying"}
    # The calibration turned no class off, and each urgent class kept within its false-alarm budget.
    assert all(on < 1.0 for on in meta["on"].values()), meta["on"]
    cal = meta["timeline"]["calibration"]["per_class"]
    for name in tracker.urgent_classes():
        assert cal[name]["captions"] > 0 and cal[name]["false_alarms_per_hour"] <= 2.0, (name, cal[name])
    # Forcing window scoring for all classes still works (the configuration's `scoring = "window"`).
    assert make_tracker(home, scoring="window").window_classes == ()
    # Recent contexts (the last k seconds alone) are read from the bundle, for window classes only.
    assert tracker.recent_context == {c: int(k) for c, k in meta.get("recent_context", {}).items()}
    assert set(tracker.recent_context) <= set(tracker.window_classes)
    assert make_tracker(home, scoring="window").recent_context == {}
