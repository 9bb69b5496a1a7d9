"""The VGGish log-mel front end: waveform -> ``[N, 96, 64]`` examples.

Numerically the published VGGish input pipeline (``vggish_input`` and
``mel_features``): 25 ms periodic-Hann frames every 10 ms, magnitude of a
512-point FFT, 64 HTK-mel bands from 125 to 7500 Hz, ``log(mel + 0.01)``,
non-overlapping 96-frame examples. All of it in float64, examples returned as
float32.

:func:`waveform_to_examples` is the pure batch function; :class:`StreamingFrontend`
takes 16 kHz blocks of any size and yields the same examples. Both compute
each example with :func:`_example_log_mel` on its own 15,600 samples, so the
two agree bit for bit.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import numpy.typing as npt

from pipeline import audio, params


def hertz_to_mel(frequencies_hertz: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """HTK mel scale: ``1127 * ln(1 + f / 700)``."""
    return params.MEL_HIGH_FREQUENCY_Q * np.log(
        1.0 + np.asarray(frequencies_hertz, dtype=np.float64) / params.MEL_BREAK_FREQUENCY_HERTZ
    )


def spectrogram_to_mel_matrix(
    num_mel_bins: int = params.NUM_MEL_BINS,
    num_spectrogram_bins: int = params.NUM_SPECTROGRAM_BINS,
    audio_sample_rate: int = params.SAMPLE_RATE,
    lower_edge_hertz: float = params.MEL_MIN_HZ,
    upper_edge_hertz: float = params.MEL_MAX_HZ,
) -> npt.NDArray[np.float64]:
    """Triangular mel weights, ``[num_spectrogram_bins, num_mel_bins]``.

    Triangles are built in the mel domain between equally spaced band edges;
    the DC bin gets no weight.

    Raises:
      ValueError: if the edges are not ``0 <= lower < upper <= Nyquist``.
    """
    nyquist = audio_sample_rate / 2.0
    if not 0.0 <= lower_edge_hertz < upper_edge_hertz <= nyquist:
        raise ValueError(
            f"mel edges must satisfy 0 <= lower < upper <= {nyquist} Hz; "
            f"got lower={lower_edge_hertz}, upper={upper_edge_hertz}"
        )
    bins_mel = hertz_to_mel(np.linspace(0.0, nyquist, num_spectrogram_bins))
    edges = np.linspace(
        hertz_to_mel(lower_edge_hertz), hertz_to_mel(upper_edge_hertz), num_mel_bins + 2
    )
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    lower_slope = (bins_mel[:, None] - lower[None, :]) / (center - lower)[None, :]
    upper_slope = (upper[None, :] - bins_mel[:, None]) / (upper - center)[None, :]
    weights = np.maximum(0.0, np.minimum(lower_slope, upper_slope))
    weights[0, :] = 0.0
    return weights


@lru_cache(maxsize=1)
def _mel_matrix() -> npt.NDArray[np.float64]:
    m = spectrogram_to_mel_matrix()
    m.setflags(write=False)
    return m


@lru_cache(maxsize=1)
def _periodic_hann() -> npt.NDArray[np.float64]:
    n = params.STFT_WINDOW_SAMPLES
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi / n * np.arange(n))
    w.setflags(write=False)
    return w


def frame(data: npt.NDArray, window_length: int, hop_length: int) -> npt.NDArray:
    """Views ``data`` as overlapping frames ``[num_frames, window_length, ...]``.

    Only complete frames are kept; too little data gives zero frames.
    """
    num_frames = max(0, 1 + (data.shape[0] - window_length) // hop_length)
    shape = (num_frames, window_length) + data.shape[1:]
    strides = (data.strides[0] * hop_length,) + data.strides
    return np.lib.stride_tricks.as_strided(data, shape=shape, strides=strides, writeable=False)


def log_mel_spectrogram(samples: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Log-mel spectrogram of 16 kHz mono audio.

    Args:
      samples: float ``[n]`` at 16 kHz.

    Returns:
      float64 ``[num_frames, 64]``, ``num_frames = 1 + (n - 400) // 160`` (0 if n < 400).
    """
    x = np.asarray(samples, dtype=np.float64)
    frames = frame(x, params.STFT_WINDOW_SAMPLES, params.STFT_HOP_SAMPLES)
    spectrum = np.abs(np.fft.rfft(frames * _periodic_hann(), params.FFT_LENGTH))
    return np.log(spectrum @ _mel_matrix() + params.LOG_OFFSET)


def _example_log_mel(span: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    """One example from exactly ``EXAMPLE_SPAN_SAMPLES`` samples -> float32 ``[96, 64]``."""
    return log_mel_spectrogram(span).astype(np.float32)


def _examples_from_16k(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    n = 0 if x.shape[0] < params.EXAMPLE_SPAN_SAMPLES else (
        1 + (x.shape[0] - params.EXAMPLE_SPAN_SAMPLES) // params.EXAMPLE_HOP_SAMPLES
    )
    out = np.empty((n, params.NUM_FRAMES, params.NUM_MEL_BINS), dtype=np.float32)
    for i in range(n):
        start = i * params.EXAMPLE_HOP_SAMPLES
        out[i] = _example_log_mel(x[start : start + params.EXAMPLE_SPAN_SAMPLES])
    return out


def waveform_to_examples(
    samples: npt.ArrayLike, sample_rate: int, resample_filter: str = params.RESAMPLE_FILTER
) -> npt.NDArray[np.float32]:
    """Converts a waveform into VGGish input examples.

    Args:
      samples: ``[n]`` or ``[n, channels]`` (channels are averaged); float in
        [-1, 1], or int16/int32 PCM (scaled to [-1, 1]).
      sample_rate: rate of ``samples``, Hz; other rates than 16 kHz are
        resampled with resampy.
      resample_filter: resampy filter for that.

    Returns:
      float32 ``[N, 96, 64]``: one log-mel patch per 0.96 s, no overlap; N is 0
      for fewer than 15,600 samples at 16 kHz.
    """
    mono = audio.condition(samples)
    x = audio.resample(mono, sample_rate, params.SAMPLE_RATE, filter=resample_filter)
    return _examples_from_16k(np.asarray(x, dtype=np.float64))


class StreamingFrontend:
    """Turns 16 kHz mono blocks of any size into the examples of the whole stream.

    ``process(block)`` returns the examples completed by that block (possibly
    none); across the stream they equal ``waveform_to_examples`` of the
    concatenated blocks exactly.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forgets buffered samples; the next block starts a new stream."""
        self._buf = np.zeros(0, dtype=np.float64)
        self._examples_done = 0

    @property
    def examples_done(self) -> int:
        """Examples returned since the start of the stream."""
        return self._examples_done

    def process(self, block: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Takes float ``[n]`` at 16 kHz; returns float32 ``[k, 96, 64]``, k >= 0."""
        x = np.asarray(block, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"StreamingFrontend takes mono 16 kHz [n] blocks; got shape {x.shape}")
        self._buf = np.concatenate([self._buf, x]) if self._buf.size else x.copy()
        out = _examples_from_16k(self._buf)
        if out.shape[0]:
            self._buf = self._buf[out.shape[0] * params.EXAMPLE_HOP_SAMPLES :].copy()
            self._examples_done += out.shape[0]
        return out
