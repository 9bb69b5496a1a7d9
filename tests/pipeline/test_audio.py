"""Audio conditioning and the streaming resampler."""

import numpy as np
import pytest
import resampy

import helpers
from pipeline import audio


def test_int16_and_int32_scale_to_unit_range():
    x16 = np.array([-32768, 0, 16384, 32767], dtype=np.int16)
    np.testing.assert_allclose(audio.to_float(x16), [-1.0, 0.0, 0.5, 32767 / 32768], rtol=0, atol=1e-7)
    x32 = np.array([-(2**31), 2**30], dtype=np.int32)
    np.testing.assert_allclose(audio.to_float(x32), [-1.0, 0.5], atol=1e-7)
    assert audio.to_float(x16).dtype == np.float32


def test_channels_are_averaged():
    stereo = np.stack([np.ones(10, np.float32), np.zeros(10, np.float32)], axis=1)
    np.testing.assert_array_equal(audio.condition(stereo), np.full(10, 0.5, np.float32))
    six = np.random.default_rng(0).standard_normal((50, 6)).astype(np.float32)
    np.testing.assert_allclose(audio.condition(six), six.mean(axis=1), atol=1e-7)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((2, 2, 2), np.float32), r"shape \[n\] or \[n, channels\]"),
        (np.zeros(4, np.uint8), "int16, int32, float32 or float64"),
        (np.zeros(4, np.complex64), "int16, int32, float32 or float64"),
        (np.zeros((4, 0), np.float32), "channels >= 1"),
    ],
)
def test_bad_audio_is_refused_with_what_was_expected(bad, match):
    with pytest.raises(ValueError, match=match):
        audio.condition(bad)


@pytest.mark.parametrize("rate", [0, -16000, 44100.5])
def test_bad_rate_is_refused(rate):
    with pytest.raises(ValueError, match="sample rate"):
        audio.StreamingResampler(rate)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
@pytest.mark.parametrize("filt", ["kaiser_best", "kaiser_fast"])
def test_streaming_resampler_equals_resampy(rate, filt):
    x = np.concatenate([helpers.chirp(1.3, rate), helpers.noise(0.7, rate, seed=rate)]).astype(np.float64)
    want = resampy.resample(x, rate, 16000, filter=filt)
    r = audio.StreamingResampler(rate, 16000, filt)
    got = np.concatenate([r.process(x), r.flush()])
    assert got.shape == want.shape
    # Same filter taps, other summation order: equal to float64 rounding.
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


@pytest.mark.parametrize("rate", [11025, 44100, 48000])
def test_streaming_resampler_is_bit_identical_for_any_block_size(rate):
    x = helpers.chirp(2.0, rate).astype(np.float64)
    whole = audio.StreamingResampler(rate)
    ref = np.concatenate([whole.process(x), whole.flush()])
    rng = np.random.default_rng(1)
    for sizes in ([1], [160], [1000], [4096], list(rng.integers(1, 5000, size=64))):
        r = audio.StreamingResampler(rate)
        got = np.concatenate(helpers.feed_blocks(r.process, x, sizes) + [r.flush()])
        assert np.array_equal(got, ref), f"block sizes {sizes[:3]}... changed the output"


def test_passthrough_at_16k_and_reset_starts_a_new_stream():
    x = helpers.noise(0.5, 16000)
    r = audio.StreamingResampler(16000)
    np.testing.assert_array_equal(r.process(x), x)
    r48 = audio.StreamingResampler(48000)
    y = helpers.sine(440, 0.5, 48000)
    a = np.concatenate([r48.process(y), r48.flush()])
    b = np.concatenate([r48.process(y), r48.flush()])  # flush resets
    np.testing.assert_array_equal(a, b)
