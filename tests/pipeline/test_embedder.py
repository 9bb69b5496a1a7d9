"""Audio blocks at any rate -> AudioSet-format embeddings, streaming equal to batch."""

import numpy as np
import pytest

import helpers
from pipeline import frontend
from pipeline.embedder import Embedder
from pipeline.postprocess import Postprocessor


@pytest.fixture(scope="module")
def post(pca_path):
    return Postprocessor(pca_path)


def _stream(emb, x, sizes):
    return np.concatenate(helpers.feed_blocks(emb.process, x, sizes) + [emb.flush()])


def test_16k_embedder_equals_the_batch_chain(vggish_model, post):
    x = np.concatenate([helpers.chirp(2.0, 16000), helpers.noise(2.0, 16000, seed=2)])
    ex = frontend.waveform_to_examples(x, 16000)
    want = post.postprocess(np.concatenate([vggish_model(ex[i : i + 1]) for i in range(len(ex))]))
    got = Embedder(vggish_model, post, 16000).embed(x)
    assert got.dtype == np.uint8 and got.shape == (4, 128)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("sizes", [[1], [160], [1000], [4096], "random"])
def test_streaming_equals_batch_at_44k_stereo_int16(vggish_model, post, sizes):
    mono = np.concatenate([helpers.chirp(2.0, 44100), helpers.noise(1.2, 44100, seed=9)])
    stereo = (np.stack([mono, 0.5 * mono], axis=1) * 32767).astype(np.int16)
    emb = Embedder(vggish_model, post, 44100)
    want = emb.embed(stereo)
    assert want.shape == (3, 128)
    if sizes == "random":
        sizes = list(np.random.default_rng(3).integers(1, 9000, size=40))
    got = _stream(emb, stereo, sizes)
    np.testing.assert_array_equal(got, want)
    assert emb.embeddings_done == 3


def test_44k_embedder_close_to_resampy_reference_chain(vggish_model, post):
    x = helpers.chirp(3.0, 44100)
    ex = frontend.waveform_to_examples(x, 44100)  # resampy.resample, as the published code
    want = post.postprocess(np.concatenate([vggish_model(ex[i : i + 1]) for i in range(len(ex))]))
    got = Embedder(vggish_model, post, 44100).embed(x)
    assert got.shape == want.shape
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1 and np.mean(diff) < 0.01
