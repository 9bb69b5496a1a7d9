"""The log-mel front end against the published VGGish reference outputs."""

import numpy as np
import pytest

import helpers
from pipeline import frontend, params


@pytest.fixture(scope="module")
def reference(shared_dir):
    return helpers.load_reference("frontend_reference.npz")


def test_params_are_the_published_vggish_values():
    assert (params.SAMPLE_RATE, params.STFT_WINDOW_SAMPLES, params.STFT_HOP_SAMPLES) == (16000, 400, 160)
    assert (params.FFT_LENGTH, params.NUM_SPECTROGRAM_BINS, params.NUM_MEL_BINS) == (512, 257, 64)
    assert (params.NUM_FRAMES, params.EXAMPLE_HOP_FRAMES, params.EXAMPLE_SPAN_SAMPLES) == (96, 96, 15600)
    assert (params.MEL_MIN_HZ, params.MEL_MAX_HZ, params.LOG_OFFSET) == (125.0, 7500.0, 0.01)


def test_mel_matrix_matches_reference(reference):
    np.testing.assert_allclose(frontend.spectrogram_to_mel_matrix(), reference["mel_matrix"], rtol=0, atol=1e-8)


def test_every_reference_case_matches(reference):
    for case in reference["case_ids"]:
        got = frontend.waveform_to_examples(reference[f"{case}_samples"], int(reference[f"{case}_sample_rate"]))
        want = reference[f"{case}_examples"]
        assert got.dtype == np.float32
        assert got.shape == want.shape, f"case {case}"
        assert got.shape[0] == int(reference[f"{case}_num_examples"])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4, err_msg=f"case {case}")


def test_log_mel_matches_reference(reference):
    for case in ("a", "b"):
        got = frontend.log_mel_spectrogram(reference[f"{case}_samples"])
        np.testing.assert_allclose(got, reference[f"{case}_log_mel"], rtol=0, atol=1e-4)


def test_example_count_edges():
    assert frontend.waveform_to_examples(np.zeros(15599, np.float32), 16000).shape == (0, 96, 64)
    assert frontend.waveform_to_examples(np.zeros(15600, np.float32), 16000).shape == (1, 96, 64)
    assert frontend.waveform_to_examples(np.zeros(15600 + 15359, np.float32), 16000).shape[0] == 1
    assert frontend.waveform_to_examples(np.zeros(15600 + 15360, np.float32), 16000).shape[0] == 2
    assert frontend.waveform_to_examples(np.zeros(0, np.float32), 16000).shape == (0, 96, 64)
    assert frontend.waveform_to_examples(np.zeros(399, np.float32), 16000).shape == (0, 96, 64)
    # Silence is log(0 + 0.01).
    np.testing.assert_allclose(frontend.waveform_to_examples(np.zeros(16000, np.float32), 16000), np.log(0.01), rtol=1e-6)


def test_stereo_int16_and_other_rates():
    x = helpers.chirp(2.0, 16000)
    stereo = np.stack([x, x], axis=1)
    np.testing.assert_array_equal(frontend.waveform_to_examples(stereo, 16000), frontend.waveform_to_examples(x, 16000))
    pcm = (x * 32767).astype(np.int16)
    np.testing.assert_array_equal(
        frontend.waveform_to_examples(pcm, 16000),
        frontend.waveform_to_examples(pcm.astype(np.float32) / 32768.0, 16000),
    )
    x44 = helpers.chirp(2.0, 44100)
    assert frontend.waveform_to_examples(x44, 44100).shape == (2, 96, 64)


@pytest.mark.parametrize("sizes", [[1], [160], [1000], [4096], "random", "all"])
def test_streaming_equals_batch(sizes):
    x = np.concatenate([helpers.chirp(3.1, 16000), helpers.noise(2.0, 16000, seed=3)])
    want = frontend.waveform_to_examples(x, 16000)
    if sizes == "random":
        sizes = list(np.random.default_rng(7).integers(1, 20000, size=50))
    elif sizes == "all":
        sizes = [x.shape[0]]
    fe = frontend.StreamingFrontend()
    got = np.concatenate(helpers.feed_blocks(fe.process, x, sizes))
    assert got.shape == want.shape
    assert np.array_equal(got, want)
    assert fe.examples_done == want.shape[0]
