"""VGGish: architecture, checkpoint / TF-Hub / SavedModel loading, exports.

The real weights cannot be downloaded here: the tests write seeded random
weights under the published names with their own writer, load them through
the real loaders, and compare with an independent NumPy forward pass.
"""

import time

import numpy as np
import pytest

import helpers
from pipeline import frontend, params, vggish
from pipeline.postprocess import Postprocessor
from pipeline.tflite import TFLiteModel


@pytest.fixture(scope="module")
def examples():
    x = np.concatenate([helpers.chirp(2.0, 16000), helpers.noise(1.0, 16000, seed=5), helpers.sine(440, 1.0, 16000)])
    ex = frontend.waveform_to_examples(x, 16000)
    assert ex.shape == (4, 96, 64)
    return ex


@pytest.fixture(scope="module")
def numpy_reference(vggish_weights, examples):
    ref = helpers.numpy_vggish(vggish_weights, examples)
    # The tolerance below is meaningful only for embeddings of this size.
    assert 5 < np.abs(ref).max() < 100
    return ref


def test_architecture_matches_the_published_model():
    model = vggish.build_vggish()
    shapes = {w.path.split("/")[0] + "/" + w.path.split("/")[1]: tuple(w.shape) for w in model.weights}
    for scope, shape in helpers.VGGISH_VARIABLES:
        layer = scope.split("/")[-1]
        assert shapes[f"{layer}/kernel"] == shape
        assert shapes[f"{layer}/bias"] == shape[-1:]
    assert model.output_shape == (None, 128)
    assert model.count_params() == sum(int(np.prod(s)) + s[-1] for _, s in helpers.VGGISH_VARIABLES)


def test_v1_checkpoint_matches_numpy_forward_pass(vggish_model, examples, numpy_reference):
    got = vggish_model(examples)
    assert got.dtype == np.float32 and got.shape == (4, 128)
    np.testing.assert_allclose(got, numpy_reference, rtol=0, atol=1e-3)


def test_v2_checkpoint_loads_the_same(vggish_weights, examples, numpy_reference, tmp_path):
    prefix = helpers.write_checkpoint(vggish_weights, tmp_path / "v2" / "model.ckpt", version=2)
    assert (tmp_path / "v2" / "model.ckpt.index").is_file()
    got = vggish.load_vggish(str(prefix))(examples)
    np.testing.assert_allclose(got, numpy_reference, rtol=0, atol=1e-3)


def test_hub_savedmodel_through_tensorflow_hub(vggish_weights, examples, numpy_reference, tmp_path):
    hub_dir = helpers.write_hub_savedmodel(vggish_weights, tmp_path / "vggish_hub")
    got = vggish.load_vggish(str(hub_dir))(examples)
    np.testing.assert_allclose(got, numpy_reference, rtol=0, atol=1e-3)


def test_hub_cache_is_used_without_network(vggish_weights, examples, numpy_reference, tmp_path, monkeypatch):
    # A handle already in the TF-Hub cache loads offline, as tensorflow_hub would.
    import hashlib

    handle = "https://tfhub.dev/google/vggish/1"
    cache = tmp_path / "hubcache"
    helpers.write_hub_savedmodel(vggish_weights, cache / hashlib.sha1(handle.encode()).hexdigest())
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(cache))
    got = vggish.load_vggish(handle)(examples)
    np.testing.assert_allclose(got, numpy_reference, rtol=0, atol=1e-3)


def test_exported_savedmodel_round_trips(vggish_model, examples, numpy_reference, tmp_path):
    out = vggish.export_savedmodel(vggish_model, tmp_path / "exported")
    again = vggish.load_vggish(str(out))
    np.testing.assert_allclose(again(examples), numpy_reference, rtol=0, atol=1e-3)
    import tensorflow as tf

    served = tf.saved_model.load(str(out)).signatures["serving_default"](log_mel=tf.constant(examples))
    np.testing.assert_allclose(served["embedding"].numpy(), numpy_reference, rtol=0, atol=1e-3)


def test_unreachable_hub_handle_fails_at_once_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "empty-cache"))
    handle = "https://tfhub.invalid/google/vggish/1"
    start = time.monotonic()
    with pytest.raises(vggish.VGGishLoadError) as err:
        vggish.load_vggish(handle)
    assert time.monotonic() - start < 10
    msg = str(err.value)
    assert handle in msg and "--vggish" in msg and "[model] vggish" in msg


def test_missing_and_wrong_sources(vggish_weights, tmp_path):
    with pytest.raises(vggish.VGGishLoadError, match="not found at"):
        vggish.load_vggish(str(tmp_path / "nothing.ckpt"))
    partial = {k: v for k, v in vggish_weights.items() if not k.startswith("vggish/fc2")}
    helpers.write_checkpoint(partial, tmp_path / "partial.ckpt")
    with pytest.raises(vggish.VGGishLoadError, match="no variable 'vggish/fc2/weights'"):
        vggish.load_vggish(str(tmp_path / "partial.ckpt"))
    wrong = dict(vggish_weights)
    wrong["vggish/fc2/weights"] = np.zeros((4096, 64), np.float32)
    helpers.write_checkpoint(wrong, tmp_path / "wrong.ckpt")
    with pytest.raises(vggish.VGGishLoadError, match=r"shape \(4096, 64\), expected \(4096, 128\)"):
        vggish.load_vggish(str(tmp_path / "wrong.ckpt"))
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(vggish.VGGishLoadError, match="cannot read the VGGish checkpoint"):
        vggish.load_vggish(str(junk))
    with pytest.raises(ValueError, match=r"\[N, 96, 64\]"):
        vggish.KerasVGGish(vggish.build_vggish(), "x")(np.zeros((2, 64, 96), np.float32))


def test_tflite_float32_agrees_with_keras(vggish_tflite, vggish_model, examples):
    keras_out = vggish_model(examples)
    lite = TFLiteModel(vggish_tflite["float32"])
    got = np.concatenate([lite(examples[i : i + 1]) for i in range(len(examples))])
    batch = lite(examples)  # resized batch works too
    scale = np.abs(keras_out).max()
    assert np.abs(got - keras_out).max() / scale < 1e-4
    assert np.abs(batch - keras_out).max() / scale < 1e-4


def test_tflite_int8_is_smaller_and_close(vggish_tflite, vggish_model, examples, pca_path):
    f32, i8 = vggish_tflite["float32"], vggish_tflite["int8"]
    assert i8.stat().st_size < 0.3 * f32.stat().st_size
    keras_out = vggish_model(examples)
    got = TFLiteModel(i8)(examples)
    rel = np.abs(got - keras_out).max() / np.abs(keras_out).max()
    assert rel < 0.05, f"int8 relative error {rel:.3f}"
    post = Postprocessor(pca_path)
    steps = np.abs(post.postprocess(got).astype(int) - post.postprocess(keras_out).astype(int))
    print(f"int8 vs float after PCA/quantisation: {np.mean(steps != 0):.1%} of values move, "
          f"median {np.median(steps[steps > 0]) if steps.any() else 0} steps, max {steps.max()}")


def test_calibration_set_spans_levels_and_spectra():
    """The full-integer export's calibration examples: deterministic, finite, and
    covering silence to loud (the log-mel range decides the activation ranges)."""
    from pipeline.frontend import waveform_to_examples
    from pipeline.vggish import calibration_examples

    a, b = calibration_examples(), calibration_examples()
    assert a.shape[1:] == (96, 64) and a.dtype == np.float32 and np.array_equal(a, b)
    assert np.isfinite(a).all()
    per_example = a.reshape(a.shape[0], -1).mean(axis=1)
    assert per_example.min() < -4.0 and per_example.max() > 0.0  # near silence and loud both present
    extra = calibration_examples((np.zeros(32000, np.float32),))
    assert extra.shape[0] == a.shape[0] + waveform_to_examples(np.zeros(32000, np.float32), 16000).shape[0]


def test_export_refuses_unknown_quantization(vggish_model, tmp_path):
    from pipeline.vggish import QUANTIZATIONS, export_tflite

    assert QUANTIZATIONS == ("float32", "int8", "int8-full")
    with pytest.raises(ValueError, match="int8-full"):
        export_tflite(vggish_model, tmp_path / "x.tflite", "int16")
    assert not (tmp_path / "x.tflite").exists()
