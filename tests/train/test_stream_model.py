"""The stream model: its registry recipe, training windows cut from scenes, per-second
validation, and a bundle that carries the per-second model in both formats."""

from __future__ import annotations

import inspect
import json
import re

import numpy as np
import pytest

from pipeline import classifier, params
from train import data, fit as fit_mod, models, scenes
from train.export import export_run


def test_rolling_windows_are_left_padded_like_the_daemon():
    emb = np.arange(30)
    idx = fit_mod.rolling_windows(emb, start=[0, 0, 5, 0], end=[0, 3, 7, 29])
    assert idx[0].tolist() == [0] * 10  # the first embedding alone fills the window
    assert idx[1].tolist() == [0] * 7 + [1, 2, 3]  # e0 e0 .. e0 e1 .. ek, newest at the end
    assert idx[2].tolist() == [5] * 8 + [6, 7]  # a stream that started at 5
    assert idx[3].tolist() == list(range(20, 30))
    with pytest.raises(ValueError, match="start <= end"):
        fit_mod.rolling_windows(emb, start=[4], end=[3])


def _clip_set(n=80, seed=0):
    """Clips whose embeddings hold their clip and frame number (so windows can be traced back)."""
    rng = np.random.default_rng(seed)
    kinds = rng.integers(-1, 4, n)
    y = np.zeros((n, 4), np.uint8)
    y[kinds >= 0, kinds[kinds >= 0]] = 1
    x = np.zeros((n, 10, 128), np.uint8)
    x[:, :, 0] = np.arange(n)[:, None]
    x[:, :, 1] = np.arange(10)[None, :]
    frames = np.full(n, 10, np.int32)
    frames[:5] = 7  # short clips play only their real frames
    aux = np.zeros((n, 6), np.uint8)
    aux[np.arange(n), np.arange(n) % 6] = 1
    return x, frames, y, aux


def test_scene_windows_straddle_boundaries_and_carry_each_embeddings_labels():
    x, frames, y, aux = _clip_set()
    wx, t = fit_mod.scene_windows(x, frames, y, aux, np.random.default_rng(1), 2000, young_share=0.2)
    assert wx.shape == (2000, 10, 128) and t["seconds"].shape == (2000, 10, 4) and t["audioset"].shape == (2000, 6)
    clip = wx[:, :, 0].astype(int)  # the clip each position came from
    np.testing.assert_array_equal(t["seconds"], y[clip])  # every embedding carries its clip's labels
    np.testing.assert_array_equal(t["classes"], y[clip].max(axis=1))
    np.testing.assert_array_equal(t["audioset"], aux[clip].max(axis=1))
    changes = (np.diff(clip, axis=1) != 0).sum(axis=1)
    assert (changes > 0).mean() > 0.3  # many windows straddle a clip boundary
    # Young windows: the stream's first embedding repeated on the left; full windows never repeat one.
    young = np.all(wx[:, 0] == wx[:, 1], axis=1)
    assert 0.15 < young.mean() < 0.25
    for w in wx[young][:50]:
        k = np.flatnonzero(np.any(w != w[0], axis=1))
        first = k[0] if len(k) else 10
        assert np.all(w[:first] == w[0]) and len({tuple(r[:2]) for r in w[first:]}) == 10 - first
    again, _ = fit_mod.scene_windows(x, frames, y, aux, np.random.default_rng(1), 2000, young_share=0.2)
    np.testing.assert_array_equal(again, wx)  # seeded


def test_per_second_metrics_read_the_lookahead_position():
    rng = np.random.default_rng(0)
    t = 400
    labels = (rng.random((t, 4)) < 0.3).astype(np.uint8)
    # Window i's position 9 - L holds the truth of embedding i - L (exactly what L promises).
    sec = np.zeros((t, 10, 4), np.float32)
    for la in (0, 1):
        sec[la:, 9 - la] = labels[: t - la]
    sec[:, :8] = rng.random((t, 8, 4))
    for la in (0, 1):
        r = fit_mod.per_second_metrics(sec, labels, la)
        assert r["micro_f1"] == pytest.approx(1.0) and r["mAP"] == pytest.approx(1.0) and r["lookahead"] == la
    assert fit_mod.per_second_metrics(sec, labels, 2)["micro_f1"] < 0.7  # noise there


def test_registry_owns_every_architecture():
    assert set(models.MODEL_NAMES) == set(models.RECIPES)
    stream = models.recipe("stream_gru")
    assert stream.scenes and stream.seconds and stream.aux
    assert stream.trained_outputs(1.0) == {"classes": 1.0, "seconds": 1.0, "audioset": 1.0}
    assert models.recipe("attention_mil").trained_outputs(0.0) == {"classes": 1.0}
    assert models.recipe("paper_cnn").losses == models.LOSSES and models.recipe("mean_mlp").losses == ("binary",)
    # fit.py asks the registry instead of testing architecture names.
    src = inspect.getsource(fit_mod)
    assert not re.search(r"""==\s*["'](paper_cnn|paper_dense|attention_mil|mean_mlp|stream_gru)["']""", src)
    assert "startswith(\"paper" not in src
    with pytest.raises(ValueError, match="unknown model"):
        models.recipe("resnet")
    with pytest.raises(ValueError, match="scene-trained"):
        fit_mod.FitConfig(data=["x"], out="y", model="stream_gru", strategy="mirrored").validate()
    with pytest.raises(ValueError, match="losses"):
        fit_mod.FitConfig(data=["x"], out="y", model="stream_gru", loss="categorical", positives_only=True).validate()


def test_stream_gru_shapes_and_context():
    m = models.stream_gru(num_aux=6, hidden=16)
    x = np.random.default_rng(0).integers(0, 256, (4, 10, 128), dtype=np.uint8)
    out = m.predict(x, verbose=0)
    assert out["classes"].shape == (4, 4) and out["seconds"].shape == (4, 10, 4) and out["audioset"].shape == (4, 6)
    sec = out["seconds"]
    assert np.all(out["classes"] <= sec.max(axis=1) + 1e-6) and np.all(out["classes"] >= sec.min(axis=1) - 1e-6)
    # Position 8 sees the future position 9 (look-ahead 1) and the far past (position 0).
    for p in (0, 9):
        y = x.copy()
        y[:, p] = 255 - y[:, p]
        assert np.max(np.abs(m.predict(y, verbose=0)["seconds"][:, 8] - sec[:, 8])) > 1e-4, p


@pytest.fixture(scope="module")
def stream_run(small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("stream") / "run"
    cfg = fit_mod.FitConfig(data=[str(small_data["data"])], out=str(out), model="stream_gru", hidden=16, epochs=3,
                            scene_windows=1500, verbose=0)
    return fit_mod.fit(cfg)


def test_stream_model_trains_on_scenes_and_selects_on_seconds(stream_run):
    info = json.loads((stream_run / "metrics.json").read_text())
    hist = json.loads((stream_run / "history.json").read_text())
    f1 = hist["val_seconds_f1_L1"]
    assert len(f1) == 3 and {"val_seconds_f1_L0", "val_seconds_map_L1", "val_map", "val_top1"} <= set(hist)
    assert info["best_epochs"] == [int(np.argmax(f1)) + 1]
    ps = info["per_second"]
    assert ps["trained_on"] == "scenes" and ps["lookaheads"] == [0, 1]
    assert ps["validation"]["L1"]["micro_f1"] == pytest.approx(max(f1), abs=1e-6)  # the kept epoch's weights
    assert ps["validation"]["L1"]["micro_f1"] > 0.8  # the fixture's classes are easy
    assert info["metrics"]["mAP"] > 0.9  # and the window output still tags clips


def test_stream_bundle_carries_seconds_in_both_formats(stream_run, small_data, tmp_path):
    import keras

    bundle = export_run(stream_run, tmp_path / "b", name="stream", version="1")
    assert sorted(p.name for p in bundle.iterdir()) == [
        "metadata.json", "model.keras", "model.tflite", "seconds.keras", "seconds.tflite"]
    meta = json.loads((bundle / "metadata.json").read_text())
    sec = meta["seconds"]
    assert sec["trained_on"] == "scenes" and sec["lookaheads"] == [0, 1] and sec["keras"] == "seconds.keras"
    assert sec["validation"]["L1"]["micro_f1"] > 0.8 and sec["model"] == "stream_gru"
    assert max(sec["parity_max_abs_diff"].values()) <= 1e-4
    clips, _ = data.load_clips(small_data["data"], num_labels=10)
    x = clips.x[:32]
    ref = keras.saving.load_model(bundle / "seconds.keras", compile=False).predict(x, verbose=0)
    for runtime in ("litert", "keras"):
        c = classifier.load_classifier(bundle, runtime=runtime)
        assert c.has_seconds
        assert np.max(np.abs(c.predict_seconds(x) - ref)) < 1e-4


def test_window_from_keeps_another_bundles_window_model(stream_run, tmp_path):
    shipped = classifier.default_bundle_path()
    mixed = export_run(stream_run, tmp_path / "mixed", name="mixed", version="1", window_from=shipped)
    a, b = (json.loads((p / "metadata.json").read_text()) for p in (shipped, mixed))
    assert b["thresholds"] == a["thresholds"] and b["metrics"] == a["metrics"]
    assert b["training"]["window_model_from"].startswith(f"{a['name']}@{a['version']}")
    assert b["training"]["seconds_model"]["model"] == "stream_gru" and b["seconds"]["trained_on"] == "scenes"
    x = np.random.default_rng(0).integers(0, 256, (16, 10, 128), dtype=np.uint8)
    got = classifier.load_classifier(mixed, runtime="litert").predict(x)
    np.testing.assert_allclose(got, classifier.load_classifier(shipped, runtime="litert").predict(x), atol=1e-4)
    own = export_run(stream_run, tmp_path / "own")
    assert np.max(np.abs(classifier.load_classifier(own, runtime="litert").predict(x) - got)) > 1e-3


def test_seconds_from_keeps_another_bundles_per_second_model(stream_run, tmp_path):
    shipped = classifier.default_bundle_path()
    new = export_run(stream_run, tmp_path / "new", name="new", version="1", seconds_from=shipped)
    a, b = (json.loads((p / "metadata.json").read_text()) for p in (shipped, new))
    assert b["training"]["seconds_model"]["from"].startswith(f"{a['name']}@{a['version']}")
    assert b["seconds"]["validation"] == a["seconds"]["validation"] and b["seconds"]["model"] == a["seconds"]["model"]
    x = np.random.default_rng(1).integers(0, 256, (16, 10, 128), dtype=np.uint8)
    old_c, new_c = (classifier.load_classifier(p, runtime="litert") for p in (shipped, new))
    np.testing.assert_allclose(new_c.predict_seconds(x), old_c.predict_seconds(x), atol=1e-4)
    assert np.max(np.abs(new_c.predict(x) - old_c.predict(x))) > 1e-3  # the window model is the run's
    with pytest.raises(ValueError, match="not both"):
        export_run(stream_run, tmp_path / "both", window_from=shipped, seconds_from=shipped)
