"""Audio conditioning: PCM scaling, down-mix to mono, resampling to 16 kHz.

Two resamplers share resampy's filters:

* :func:`resample` is resampy's own ``resample`` (what the published VGGish
  input code calls), for whole signals.
* :class:`StreamingResampler` computes the same zero-padded polyphase filter
  block by block. It works in fixed chunks of output, so its result is
  bit-identical however the input is split, and equals :func:`resample` to
  about 1e-7 (float summation order).
"""

from __future__ import annotations

import math
import os
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from pipeline import params

_INT_SCALES = {np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2147483648.0}


def to_float(samples: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Scales PCM to float32 in [-1, 1].

    Args:
      samples: int16, int32 (full-scale PCM), or float32/float64 already in
        [-1, 1]; shape ``[n]`` or ``[n, channels]``.

    Returns:
      float32 array of the same shape.

    Raises:
      ValueError: for other dtypes or more than two dimensions.
    """
    arr = np.asarray(samples)
    if arr.ndim not in (1, 2):
        raise ValueError(
            f"audio must have shape [n] or [n, channels]; got an array of shape {arr.shape}"
        )
    if arr.dtype in _INT_SCALES:
        return (arr.astype(np.float32) / np.float32(_INT_SCALES[arr.dtype])).astype(np.float32)
    if arr.dtype in (np.float32, np.float64):
        return arr.astype(np.float32, copy=False)
    raise ValueError(
        f"audio samples must be int16, int32, float32 or float64; got dtype {arr.dtype}"
    )


def to_mono(samples: npt.NDArray) -> npt.NDArray:
    """Averages the channels of ``[n, channels]`` audio; ``[n]`` passes through.

    Raises:
      ValueError: for more than two dimensions or zero channels.
    """
    if samples.ndim == 1:
        return samples
    if samples.ndim != 2 or samples.shape[1] == 0:
        raise ValueError(
            f"audio must have shape [n] or [n, channels] with channels >= 1; got {samples.shape}"
        )
    if samples.shape[1] == 1:
        return samples[:, 0]
    return samples.mean(axis=1)


def condition(samples: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """PCM or float, mono or multi-channel -> mono float32 in [-1, 1]."""
    return to_mono(to_float(samples)).astype(np.float32, copy=False)


def level_dbfs(sum_squares: float, count: int) -> float:
    """RMS level in dBFS of ``count`` samples whose squares sum to ``sum_squares``.

    0 dBFS is the RMS of a full-scale square wave (samples at ±1); a full-scale
    sine is -3 dBFS. Silence (and ``count == 0``) gives
    ``params.LEVEL_FLOOR_DBFS``, so the value is always a finite number.
    """
    if count <= 0 or not sum_squares > 0:
        return params.LEVEL_FLOOR_DBFS
    return max(params.LEVEL_FLOOR_DBFS, 10.0 * math.log10(sum_squares / count))


class LevelMeter:
    """Levels of consecutive 0.96-s stretches of one audio stream, block by block.

    Stretch ``i`` is the input samples of ``[i x 0.96 s, (i + 1) x 0.96 s)``: the
    audio of embedding ``i`` (which also reads the next 15 ms). Blocks of any
    size give the same levels.

    Args:
      sample_rate: the stream's rate, Hz.
      keep: how many finished stretches to remember (older ones are dropped).
    """

    def __init__(self, sample_rate: int, keep: int = 2 * params.WINDOW_EMBEDDINGS) -> None:
        self.rate = _check_rate(sample_rate)
        self.keep = keep
        self._samples = 0  # samples seen
        self._index = 0  # the stretch being filled
        self._sum = 0.0
        self._count = 0
        self._levels: dict[int, float] = {}

    def _boundary(self, i: int) -> int:
        """First sample of stretch ``i`` (rounded, so stretches tile exactly)."""
        return int(round(i * params.EMBEDDING_SECONDS * self.rate))

    def add(self, samples: npt.ArrayLike) -> None:
        """Adds a block (``[n]`` or ``[n, channels]`` PCM, mixed to mono)."""
        x = condition(samples).astype(np.float64)
        pos = 0
        while pos < x.shape[0]:
            end = self._boundary(self._index + 1) - self._samples
            part = x[pos:pos + max(end, 0)]
            self._sum += float(np.dot(part, part))
            self._count += part.shape[0]
            self._samples += part.shape[0]
            pos += part.shape[0]
            if self._samples >= self._boundary(self._index + 1):
                self._levels[self._index] = level_dbfs(self._sum, self._count)
                self._levels.pop(self._index - self.keep, None)
                self._index, self._sum, self._count = self._index + 1, 0.0, 0

    def level(self, i: int) -> float | None:
        """Level of stretch ``i``: finished, or the part heard so far (at the end of a
        stream); ``None`` if it was dropped or nothing of it was heard."""
        if i in self._levels:
            return self._levels[i]
        if i == self._index and self._count > 0:
            return level_dbfs(self._sum, self._count)
        return None


def _check_rate(sample_rate: float) -> int:
    if isinstance(sample_rate, bool) or not float(sample_rate).is_integer() or sample_rate <= 0:
        raise ValueError(f"sample rate must be a positive whole number of Hz; got {sample_rate!r}")
    return int(sample_rate)


def resample(
    samples: npt.ArrayLike,
    sample_rate: int,
    target_rate: int = params.SAMPLE_RATE,
    filter: str = params.RESAMPLE_FILTER,
) -> npt.NDArray[np.float64]:
    """Resamples mono audio with resampy (the reference resampler).

    Args:
      samples: float ``[n]``.
      sample_rate: rate of ``samples``, Hz.
      target_rate: wanted rate, Hz.
      filter: a resampy filter name (``kaiser_best`` or ``kaiser_fast``).

    Returns:
      ``[int(n * target_rate / sample_rate)]`` samples (the input unchanged when
      the rates are equal).
    """
    import resampy  # numba compiles on first use; keep it off the import path

    sample_rate = _check_rate(sample_rate)
    target_rate = _check_rate(target_rate)
    x = np.asarray(samples)
    if sample_rate == target_rate:
        return x
    if int(x.shape[0] * target_rate / sample_rate) < 1:
        return np.zeros(0, dtype=np.float64)
    return resampy.resample(x.astype(np.float64), sample_rate, target_rate, filter=filter)


def _resampy_filter(name: str) -> tuple[npt.NDArray[np.float64], int]:
    """resampy's pre-computed filter ``(half_window, precision)``.

    Read from resampy's installed data without importing resampy, whose import
    compiles numba code (~0.5 s and ~70 MiB on an edge box) that the streaming
    resampler does not use.
    """
    import importlib.util

    spec = importlib.util.find_spec("resampy")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("resampy is not installed; install the project with scripts/setup")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", f"{name}.npz")
    if not os.path.isfile(path):
        raise ValueError(f"unknown resampling filter {name!r}: use 'kaiser_best' or 'kaiser_fast'")
    with np.load(path) as data:
        return data["half_window"].astype(np.float64), int(data["precision"])


@lru_cache(maxsize=16)
def _polyphase_kernel(
    sample_rate: int, target_rate: int, filter: str
) -> tuple[int, int, int, npt.NDArray[np.float64]]:
    """Builds resampy's interpolation filter as a polyphase matrix.

    Output sample ``t = b*q + r`` (block ``b``, phase ``r``) is
    ``kernel[r] @ x[b*p - left : b*p - left + span]`` with zero padding outside
    the signal, which is what resampy's loop computes tap by tap.

    Returns:
      ``(p, q, left, kernel)`` with ``p/q = sample_rate/target_rate`` reduced
      and ``kernel`` of shape ``[q, span]``.
    """
    g = math.gcd(sample_rate, target_rate)
    p, q = sample_rate // g, target_rate // g
    win, num_table = _resampy_filter(filter)
    ratio = target_rate / sample_rate
    if ratio < 1:
        win = ratio * win
    delta = np.diff(win, append=win[-1])
    scale = min(1.0, ratio)
    index_step = int(scale * num_table)
    nwin = win.shape[0]
    max_taps = nwin // index_step + 1
    left = max_taps - 1  # taps to the left of (and including) the base sample, minus one
    span = p + 2 * max_taps + 1
    if q * span > 40_000_000:
        raise ValueError(
            f"cannot stream-resample {sample_rate} Hz to {target_rate} Hz: the rates share "
            f"too small a factor (polyphase table {q}x{span}); convert the audio to a common "
            "rate such as 44100 or 48000 Hz first (e.g. with sox)"
        )
    kernel = np.zeros((q, span), dtype=np.float64)
    for r in range(q):
        base = (r * p) // q
        frac = scale * ((r * p) / q - base)
        # Left wing: taps on x[base - i], i = 0, 1, ...
        index_frac = frac * num_table
        offset = int(index_frac)
        eta = index_frac - offset
        n_left = (nwin - offset) // index_step
        idx = offset + np.arange(n_left) * index_step
        w_left = win[idx] + eta * delta[idx]
        cols = left + base - np.arange(n_left)
        kernel[r, cols] += w_left
        # Right wing: taps on x[base + 1 + k], k = 0, 1, ...
        index_frac = (scale - frac) * num_table
        offset = int(index_frac)
        eta = index_frac - offset
        n_right = (nwin - offset) // index_step
        idx = offset + np.arange(n_right) * index_step
        w_right = win[idx] + eta * delta[idx]
        cols = left + base + 1 + np.arange(n_right)
        kernel[r, cols] += w_right
    # Trim columns that are zero for every phase.
    used = np.nonzero(np.any(kernel != 0.0, axis=0))[0]
    first, last = int(used[0]), int(used[-1])
    kernel = np.ascontiguousarray(kernel[:, first : last + 1])
    return p, q, left - first, kernel


def _phase_groups(
    kernel: npt.NDArray[np.float64], groups: int
) -> list[tuple[slice, slice, npt.NDArray[np.float64]]]:
    """Splits a polyphase table ``[q, span]`` into ``groups`` runs of phases.

    Returns:
      ``(phases, columns, table)`` per group: ``table`` is the
      ``[columns, phases]`` part of ``kernel.T`` that is not zero for every
      phase of the group.
    """
    q = kernel.shape[0]
    n = min(groups, q)
    out = []
    for g in range(n):
        rows = slice(g * q // n, (g + 1) * q // n)
        used = np.nonzero(np.any(kernel[rows] != 0.0, axis=0))[0]
        cols = slice(int(used[0]), int(used[-1]) + 1)
        out.append((rows, cols, np.ascontiguousarray(kernel[rows, cols].T)))
    return out


class StreamingResampler:
    """Resamples a stream of mono blocks of any size to ``target_rate``.

    The output for the whole stream is bit-identical however it is split into
    blocks: output is computed in fixed chunks of ``chunk_blocks * q`` samples
    aligned to the start of the stream, each with the same matrix products of
    fixed shape. It computes in float64, as resampy does: float32 would save
    another 0.1 ms per second of audio, but its rounding differs between CPU
    architectures by enough to move int8 VGGish embeddings (3.6 % of uint8
    values arm64 vs x86-64 on ``scripts/arm64-check``'s speech, against 0.00 %
    in float64).

    Args:
      sample_rate: input rate, Hz.
      target_rate: output rate, Hz.
      filter: resampy filter name.
    """

    def __init__(
        self,
        sample_rate: int,
        target_rate: int = params.SAMPLE_RATE,
        filter: str = params.RESAMPLE_FILTER,
    ) -> None:
        self.sample_rate = _check_rate(sample_rate)
        self.target_rate = _check_rate(target_rate)
        self.filter = filter
        self._passthrough = self.sample_rate == self.target_rate
        if not self._passthrough:
            self._p, self._q, self._left, kernel = _polyphase_kernel(self.sample_rate, self.target_rate, filter)
            self._groups = _phase_groups(kernel, params.RESAMPLE_PHASE_GROUPS)
            self._span = kernel.shape[1]
            target_outputs = max(1, int(params.RESAMPLE_CHUNK_SECONDS * self.target_rate))
            self._chunk_blocks = max(1, -(-target_outputs // self._q))
        self.reset()

    def reset(self) -> None:
        """Forgets all input; the next sample starts a new stream."""
        self._consumed_in = 0  # input samples received
        self._emitted_out = 0  # output samples returned
        if not self._passthrough:
            # Buffer starts `left` zeros before input sample 0 (resampy's zero padding).
            self._buf = np.zeros(self._left, dtype=np.float64)
            self._buf_start = -self._left  # absolute input index of _buf[0]
            self._next_block = 0

    @property
    def output_samples(self) -> int:
        """Output samples returned so far."""
        return self._emitted_out

    def process(self, block: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Takes mono float ``[n]``, returns the output samples now complete."""
        x = np.asarray(block, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"StreamingResampler takes mono [n] blocks; got shape {x.shape}")
        self._consumed_in += x.shape[0]
        if self._passthrough:
            self._emitted_out += x.shape[0]
            return x
        self._buf = np.concatenate([self._buf, x])
        return self._run(final=False)

    def flush(self) -> npt.NDArray[np.float64]:
        """Ends the stream: returns the remaining output (zero padding at the end),
        so that the total length is ``int(n_in * target_rate / sample_rate)``."""
        if self._passthrough:
            return np.zeros(0, dtype=np.float64)
        out = self._run(final=True)
        self.reset()
        return out

    def _run(self, final: bool) -> npt.NDArray[np.float64]:
        p, q, span, cb = self._p, self._q, self._span, self._chunk_blocks
        b0 = self._next_block
        have_end = self._buf_start + self._buf.shape[0]
        # Whole chunks the buffer holds: chunk c needs input up to
        # (b0 + (c + 1) * cb - 1) * p - left + span (exclusive).
        chunks = max(0, (have_end + self._left - span - (b0 - 1) * p) // (cb * p))
        total_out = (self._consumed_in * self.target_rate) // self.sample_rate
        if final:
            wanted = max(0, -(-(total_out - b0 * q) // (cb * q)))
            if wanted > chunks:  # the stream's end: resampy pads with zeros
                end = (b0 + wanted * cb - 1) * p - self._left + span
                self._buf = np.concatenate([self._buf, np.zeros(end - have_end)])
                chunks = wanted
        if chunks == 0:
            return np.zeros(0, dtype=np.float64)
        step = self._buf.strides[0]
        frames = np.lib.stride_tricks.as_strided(
            self._buf[b0 * p - self._left - self._buf_start :],
            shape=(chunks * cb, span),
            strides=(p * step, step),
            writeable=False,
        )
        out = np.empty((chunks * cb, q), dtype=np.float64)
        for c in range(chunks):
            rows = slice(c * cb, (c + 1) * cb)
            for phases, cols, table in self._groups:
                out[rows, phases] = frames[rows, cols] @ table
        self._next_block = b0 + chunks * cb
        # Drop input no later chunk needs.
        keep_from = self._next_block * p - self._left
        self._buf = self._buf[keep_from - self._buf_start :]
        self._buf_start = keep_from
        flat = out.reshape(-1)
        if final:
            flat = flat[: max(0, total_out - self._emitted_out)]
        self._emitted_out += flat.shape[0]
        return flat
