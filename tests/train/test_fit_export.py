"""fit -> run directory -> export -> bundle -> load_classifier / evaluate, on written tfrecords."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline import classifier, params
from train import data, fit as fit_mod
from train.export import export_run

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_run(small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    cfg = fit_mod.FitConfig(data=[str(small_data["data"])], out=str(out), hidden=32, epochs=4, verbose=0)
    return fit_mod.fit(cfg)


@pytest.fixture(scope="module")
def small_bundle(small_run, tmp_path_factory):
    return export_run(small_run, tmp_path_factory.mktemp("bundle") / "b", name="test-model", version="7")


def test_run_directory(small_run):
    for name in ("config.json", "history.json", "metrics.json", "model.keras", "seconds.keras", "val_scores.npz"):
        assert (small_run / name).is_file(), name
    for png in ("learning_curves.png", "pr_curves.png", "confusion.png"):
        assert (small_run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    info = json.loads((small_run / "metrics.json").read_text())
    assert info["data"]["videos_on_both_sides"] == 0
    assert info["metrics"]["mAP"] > 0.9  # the fixture's classes are easy to learn
    hist = json.loads((small_run / "history.json").read_text())
    assert len(hist["val_map"]) == 4 and len(hist["loss"]) == 4


def test_bundle_runtimes_agree(small_bundle, small_run, small_data):
    meta = json.loads((small_bundle / "metadata.json").read_text())
    for key in ("name", "version", "classes", "input", "thresholds", "metrics", "training", "created"):
        assert key in meta, key
    assert meta["input"] == {"frames": 10, "dims": 128, "dtype": "uint8", "scaling": "x / 255"}
    assert [c["name"] for c in meta["classes"]] == list(params.CLASS_NAMES)
    assert meta["classes"][0] == {"name": "Speech", "mid": "/m/09x0r", "label_indices": [0, 1]}
    assert "split" in meta["metrics"] and meta["training"]["model"] == "attention_mil"
    assert sorted(p.name for p in small_bundle.iterdir()) == [
        "metadata.json", "model.keras", "model.tflite", "seconds.keras", "seconds.tflite"]
    assert meta["seconds"]["trained_on"] == "clips" and meta["seconds"]["keras"] == "seconds.keras"
    clips, _ = data.load_clips(small_data["data"], num_labels=10)
    lite = classifier.load_classifier(small_bundle, runtime="litert")
    ker = classifier.load_classifier(small_bundle, runtime="keras")
    assert lite.classes == ker.classes == params.CLASS_NAMES
    assert lite.name == "test-model" and lite.version == "7" and lite.thresholds == meta["thresholds"]
    a, b = lite.predict(clips.x), ker.predict(clips.x)
    assert a.shape == (len(clips), 4) and a.dtype == np.float32
    assert np.max(np.abs(a - b)) < 1e-4
    assert np.all((a >= 0) & (a <= 1))
    import keras

    seconds_keras = keras.saving.load_model(small_run / "seconds.keras", compile=False)
    s1, s2 = lite.predict_seconds(clips.x[:20]), ker.predict_seconds(clips.x[:20])
    ref = seconds_keras.predict(clips.x[:20], verbose=0)
    assert s1.shape == (20, 10, 4) and np.max(np.abs(s1 - ref)) < 1e-4 and np.max(np.abs(s2 - ref)) < 1e-4
    # The window score of an attention model lies within its seconds' range.
    w = ker.predict(clips.x[:20])
    assert np.all(w <= ref.max(axis=1) + 1e-5) and np.all(w >= ref.min(axis=1) - 1e-5)
    assert lite.predict(clips.x[0]).shape == (1, 4)
    with pytest.raises(ValueError, match=r"\[B, 10, 128\]"):
        lite.predict(np.zeros((2, 9, 128), np.uint8))


def test_evaluate_cli_prints_one_json_object(small_bundle, small_data):
    proc = subprocess.run(
        [sys.executable, "-m", "train", "evaluate", "--model", str(small_bundle), "--data", str(small_data["data"])],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)  # exactly one JSON document
    assert proc.stdout.count("\n") == 1
    assert result["counts"]["clips"] == 600
    assert set(result["per_class"]) == set(params.CLASS_NAMES)
    for key in ("mAP", "top1_accuracy", "binary_accuracy", "macro_f1"):
        assert 0.0 <= result[key] <= 1.0, key
    pc = result["per_class"]["Music"]
    assert {"ap", "roc_auc", "precision", "recall", "f1", "threshold"} <= set(pc)
    assert result["mAP"] > 0.9


def test_bad_bundles_say_what_is_wrong(tmp_path, small_bundle):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "none")):
        classifier.load_classifier(tmp_path / "none")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metadata.json").write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON.*audiocap-train"):
        classifier.load_classifier(broken)
    (broken / "metadata.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(classifier.BundleError, match="lacks"):
        classifier.load_classifier(broken)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "metadata.json").write_text((small_bundle / "metadata.json").read_text())
    with pytest.raises(FileNotFoundError, match="model.tflite"):
        classifier.load_classifier(partial, runtime="litert")
    (partial / "model.tflite").write_bytes(b"not a flatbuffer")
    with pytest.raises(ValueError, match="model.tflite"):
        classifier.load_classifier(partial, runtime="litert")
    with pytest.raises(ValueError, match="runtime"):
        classifier.load_classifier(small_bundle, runtime="onnx")


def test_mixed_ensemble(small_data, tmp_path):
    cfg = fit_mod.FitConfig(data=[str(small_data["data"])], out=str(tmp_path / "ens"), hidden=16, epochs=1,
                            members="attention_mil*2,mean_mlp", verbose=0)
    assert cfg.member_models() == ["attention_mil", "attention_mil", "mean_mlp"]
    run = fit_mod.fit(cfg)
    info = json.loads((run / "metrics.json").read_text())
    assert [m["model"] for m in info["members"]] == cfg.member_models()
    assert (run / "seconds.keras").is_file()
    with pytest.raises(ValueError, match="members"):
        fit_mod.FitConfig(data=["x"], out="y", members="attention_mil*two").validate()


def test_train_fraction_takes_nested_shares_of_the_training_videos(small_data):
    clips, _ = data.load_clips(small_data["data"], num_labels=10)
    base = fit_mod.FitConfig(data=[str(small_data["data"])], out="unused")
    cmap = fit_mod.resolve_class_map(base)
    preps = {f: fit_mod.prepare(fit_mod.FitConfig(**{**base.__dict__, "train_fraction": f}), clips, cmap)
             for f in (0.25, 0.5, 1.0)}
    videos = {f: set(map(bytes, p.x_train.reshape(len(p.x_train), -1))) for f, p in preps.items()}
    assert videos[0.25] < videos[0.5] < videos[1.0]  # nested, and each share smaller
    full = preps[1.0].summary["train_videos"]
    for f in (0.25, 0.5):
        assert abs(preps[f].summary["train_videos"] - f * full) < 0.15 * full, (f, preps[f].summary)
        assert preps[f].summary["train_fraction"] == f
        np.testing.assert_array_equal(preps[f].x_val, preps[1.0].x_val)  # validation unchanged
    for bad, msg in ((0.0, "train_fraction must be in"), (1.5, "train_fraction must be in")):
        with pytest.raises(ValueError, match=msg):
            fit_mod.FitConfig(data=["x"], out="y", train_fraction=bad).validate()
    with pytest.raises(ValueError, match="needs the grouped split"):
        fit_mod.FitConfig(data=["x"], out="y", train_fraction=0.5, split="random").validate()


def test_stream_mode_trains_from_disk_with_the_same_split(small_data, tmp_path):
    cfg = fit_mod.FitConfig(data=[str(small_data["data"])], out=str(tmp_path / "s"), hidden=32, epochs=3,
                            stream=True, stream_sample=128, verbose=0)
    run = fit_mod.fit(cfg)
    info = json.loads((run / "metrics.json").read_text())
    clips, _ = data.load_clips(small_data["data"], num_labels=10)
    _, va = data.grouped_split(clips.video_id, cfg.val_fraction)
    assert info["data"]["streamed"] and info["data"]["val_rows"] == len(va)
    assert info["metrics"]["mAP"] > 0.9
    with pytest.raises(ValueError, match="--stream"):
        fit_mod.FitConfig(data=["x"], out="y", stream=True, oversample="permute").validate()


def test_export_refuses_a_non_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a fit run directory"):
        export_run(tmp_path, tmp_path / "out")


def test_paper_protocol_leaks_and_grouped_does_not(small_data, tmp_path):
    clips, stats = data.load_clips(small_data["data"], num_labels=10)
    common = dict(data=[str(small_data["data"])], model="paper_cnn", positives_only=True, oversample="permute",
                  epochs=1, verbose=0, loss="categorical")
    leaky = fit_mod.fit(fit_mod.FitConfig(out=str(tmp_path / "leaky"), split="random", **common), clips, stats)
    clean = fit_mod.fit(fit_mod.FitConfig(out=str(tmp_path / "clean"), split="grouped", **common), clips, stats)
    assert json.loads((leaky / "metrics.json").read_text())["data"]["videos_on_both_sides"] > 0
    assert json.loads((clean / "metrics.json").read_text())["data"]["videos_on_both_sides"] == 0
    with pytest.raises(ValueError, match="positives-only"):
        fit_mod.FitConfig(data=["x"], out="y", model="paper_cnn", loss="sparse").validate()


def test_shipped_bundle_runs_without_tensorflow():
    code = (
        "import sys, numpy as np\n"
        "from pipeline.classifier import load_classifier\n"
        "c = load_classifier(runtime='litert')\n"
        "x = np.random.default_rng(0).integers(0, 256, (3, 10, 128), dtype=np.uint8)\n"
        "p = c.predict(x); s = c.predict_seconds(x)\n"
        "assert p.shape == (3, 4) and s.shape == (3, 10, 4), (p.shape, s.shape)\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
        "print(c.name, c.version, c.classes)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Speech" in proc.stdout
    default = classifier.load_classifier()
    assert default.classes == params.CLASS_NAMES and default.path.parent == classifier.MODELS_DIR


def test_shipped_bundle_metrics_reproduce_on_the_validation_split(bal_train_dir):
    from train.evaluate import evaluate_bundle

    meta = classifier.load_classifier().metadata
    result = evaluate_bundle(None, bal_train_dir, runtime="litert", split="val")
    assert result["counts"]["clips"] == meta["metrics"]["counts"]["clips"]
    assert result["mAP"] == pytest.approx(meta["metrics"]["mAP"], abs=1e-4)
    assert result["top1_accuracy"] == pytest.approx(meta["metrics"]["top1_accuracy"], abs=1e-3)
