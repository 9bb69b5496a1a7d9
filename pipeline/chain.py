"""The caption chain: audio or embeddings -> windows -> scores -> caption events.

:class:`CaptionChain` is single-threaded and has no I/O: it takes a piece of
a stream (``feed_audio`` or ``feed_embeddings``) and returns what it produced
(scores and caption events), each with its audio-clock time. The daemon's
worker thread drives it block by block (``daemon.chain``), and the caption
timeline evaluation (``train.timeline``) drives the very same code.

Two ways to score, chosen by the tracker (``EventTracker.scoring``):

* ``"seconds"``: for each new embedding ``i`` the window of the last 10
  (left-padded with the oldest embedding at the start of a stream) goes through
  the bundle's per-second model, and the score at position ``9 - L`` becomes
  the score of embedding ``i - L``: each second is judged with up to ``L``
  seconds of look-ahead and the seconds before it. Captions then follow the
  sound within about ``L`` x 0.96 s. At the end of a stream the last ``L``
  seconds are scored from the last window. The tracker's ``window_classes``
  (a knock, a crying baby: short sounds the 10-s window model hears best)
  take the clip score of that same window instead, and its ``recent_context``
  classes the higher of that and the clip score of the window's last ``k``
  embeddings alone (repeated to fill the window): an alarm that began two
  seconds ago fills those ``k`` seconds long before it fills ten.
* ``"window"``: the window's clip score is the score of its newest embedding
  (captions lag, since a 10-s window keeps a sound for seconds after it ends).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Union

import numpy as np
import numpy.typing as npt

from pipeline import params
from pipeline.audio import LevelMeter
from pipeline.events import CaptionEvent, EventTracker
from pipeline.window import RollingWindow


@dataclass(frozen=True)
class WindowScores:
    """The classifier's scores for one window.

    Attributes:
      index: stream index of the window's newest embedding.
      t_start: start of that embedding (UTC epoch seconds, audio clock).
      t_end: its end (``t_start + 0.96``).
      scores: float32 ``[classes]``.
      origin: wall-clock time its audio was available.
      level_dbfs: RMS level of that embedding's 0.96 s of audio (dBFS), or
        ``None`` for a stream of embeddings.
    """

    index: int
    t_start: float
    t_end: float
    scores: npt.NDArray[np.float32]
    origin: float
    level_dbfs: float | None = None


Output = Union[WindowScores, CaptionEvent]


class _TimeMap:
    """Maps sample indices of one audio stream to UTC from the blocks' own stamps.

    Each block says when its first sample was captured; ``stamp - samples
    before it / rate`` estimates when sample 0 was. The map follows that
    estimate smoothly (an exponential average), so the ±0.1 s jitter of the
    stamps a sound server reports does not reach caption times, while slow
    clock drift is followed. A jump larger than ``params.CLOCK_RESYNC_SECONDS``
    (dropped blocks, a clock step) is taken at once.
    """

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.samples = 0
        self._origin: float | None = None  # estimated UTC of sample 0

    def add(self, n: int, t0: float) -> None:
        estimate = t0 - self.samples / self.rate
        if self._origin is None or abs(estimate - self._origin) > params.CLOCK_RESYNC_SECONDS:
            self._origin = estimate
        else:
            self._origin += params.CLOCK_SMOOTHING * (estimate - self._origin)
        self.samples += n

    def time_of(self, sample: float) -> float:
        return self._origin + sample / self.rate

    @property
    def end_time(self) -> float:
        """Time just after the last sample received."""
        return self._origin + self.samples / self.rate


class CaptionChain:
    """Turns a stream of audio or embeddings into scores and caption events.

    Args:
      classifier: ``predict(uint8 [B, 10, 128]) -> float32 [B, C]`` and, for
        per-second scoring, ``predict_seconds(uint8 [B, 10, 128]) -> float32
        [B, 10, C]``; called with one window at a time, so results do not
        depend on batching.
      tracker: the event tracker (owns thresholds, captions, and the scoring
        mode and look-ahead it was calibrated for).
      make_embedder: ``sample_rate -> Embedder`` for audio (``None`` if only
        embeddings will arrive).
      window: embeddings per window.
    """

    def __init__(
        self,
        classifier: Any,
        tracker: EventTracker,
        make_embedder: Callable[[int], Any] | None = None,
        window: int = params.WINDOW_EMBEDDINGS,
    ) -> None:
        self.classifier = classifier
        self.tracker = tracker
        self.make_embedder = make_embedder
        self.per_second = tracker.scoring == "seconds"
        self.lookahead = int(tracker.lookahead) if self.per_second else 0
        if not 0 <= self.lookahead < window:
            raise ValueError(f"look-ahead must be 0 to {window - 1} embeddings; got {self.lookahead}")
        if self.per_second and not getattr(classifier, "has_seconds", False):
            raise ValueError("per-second captions need a classifier bundle with a per-second model (seconds.tflite)")
        self.window = RollingWindow(window, pad="edge" if self.per_second else "tile")
        self._stream: Any = None
        self._embedder: Any = None
        self._times: _TimeMap | None = None
        self._levels: LevelMeter | None = None
        self._from_audio = False
        self._emb_t0: float = 0.0  # embedding streams: time of embedding 0
        self._last_end: float | None = None
        self._last_origin = 0.0
        self._pending: npt.NDArray[np.float32] | None = None  # per-second scores of the look-ahead tail
        names = tuple(getattr(tracker, "window_classes", ()) or ()) if self.per_second else ()
        self._window_cols = np.array([tracker.classes.index(c) for c in names], dtype=np.int64)
        recent = dict(getattr(tracker, "recent_context", None) or {}) if self.per_second else {}
        # (rows of the window that make the recent window, columns that take its score), per context length
        self._recent = [(window - k + np.arange(window) % k,
                         np.array([tracker.classes.index(c) for c in names if recent.get(c) == k], dtype=np.int64))
                        for k in sorted(set(recent.values()))]
        self._newest = -1  # stream index of the newest embedding scored
        self.embeddings = 0
        self.windows = 0

    @property
    def latency_seconds(self) -> float:
        """Audio time a caption edge waits for beyond its own embedding (the look-ahead)."""
        return self.lookahead * params.EMBEDDING_SECONDS

    def feed_audio(
        self, samples: npt.NDArray, sample_rate: int, t0: float, available: float, stream: Any = 0
    ) -> list[Output]:
        """Processes a block of audio.

        Args:
          samples: ``[n]`` or ``[n, channels]`` PCM (float in [-1, 1] or int).
          sample_rate: its rate, Hz (fixed for a stream).
          t0: UTC epoch seconds at which its first sample was captured.
          available: wall-clock time the block was handed over.
          stream: stream identity; a new value ends the previous stream.

        Returns:
          Scores and caption events, in time order.
        """
        out = self._switch(stream, available, audio_rate=sample_rate)
        if self._times is None or self._times.rate != sample_rate:
            raise ValueError(f"stream {stream} changed rate to {sample_rate} Hz; a new rate needs a new stream")
        self._last_origin = available
        self._times.add(samples.shape[0], t0)
        self._levels.add(samples)
        embeddings = self._embedder.process(samples)
        self._last_end = self._times.end_time
        return out + self._score(embeddings, available)

    def feed_embeddings(
        self, embeddings: npt.NDArray[np.uint8], t0: float, available: float, stream: Any = 0
    ) -> list[Output]:
        """Processes embeddings in the AudioSet format.

        Args:
          embeddings: uint8 ``[k, 128]``, one per 0.96 s.
          t0: UTC epoch seconds at which the first of them starts.
          available: wall-clock time they were handed over.
          stream: stream identity; a new value ends the previous stream.

        Returns:
          Scores and caption events, in time order.
        """
        out = self._switch(stream, available, audio_rate=None)
        self._last_origin = available
        if self._newest < 0:
            self._emb_t0 = t0
        self._last_end = t0 + embeddings.shape[0] * params.EMBEDDING_SECONDS
        return out + self._score(embeddings, available)

    def end_stream(self, origin: float | None = None) -> list[Output]:
        """Ends the current stream: the resampler's tail, the look-ahead tail, then open events are ended."""
        out: list[Output] = []
        if self._stream is None:
            return out
        origin = self._last_origin if origin is None else origin
        if self._embedder is not None:
            out += self._score(self._embedder.flush(), origin)
        if self._pending is not None:
            # The last L seconds have no future left: score them from the last window.
            first = self._newest - self.lookahead + 1
            for i in range(max(first, 0), self._newest + 1):
                pos = self.window.size - 1 - (self._newest - i)
                out += self._emit(i, self._pending[pos], origin)
        if self._last_end is not None:
            out += self.tracker.finish(self._last_end, origin)
        self._reset()
        return out

    def abandon_stream(self, origin: float) -> list[Output]:
        """Ends the current stream without scoring what is left (when scoring is what failed).

        Returns:
          The ``end`` events of the captions that were open, ended where the
          audio processed so far ends (or at ``origin`` if none was).
        """
        end = self._last_end if self._last_end is not None else origin
        try:
            return self.tracker.finish(end, origin)
        finally:
            self._reset()

    def _reset(self) -> None:
        self._stream = None
        self._embedder = None
        self._times = None
        self._levels = None
        self._last_end = None
        self._pending = None
        self._newest = -1
        self.window.reset()

    def _switch(self, stream: Any, available: float, audio_rate: int | None) -> list[Output]:
        out: list[Output] = []
        if self._stream is not None and stream == self._stream:
            return out
        if self._stream is not None:
            out += self.end_stream(available)
        self._stream = stream
        self.window.reset()
        self._newest = -1
        self._from_audio = audio_rate is not None
        if audio_rate is not None:
            if self.make_embedder is None:
                raise ValueError("this chain was built without an embedder and cannot take audio blocks")
            self._embedder = self.make_embedder(audio_rate)
            self._times = _TimeMap(audio_rate)
            self._levels = LevelMeter(audio_rate)
        else:
            self._embedder = None
            self._times = None
            self._levels = None
        return out

    def _embedding_start(self, i: int) -> float:
        if self._from_audio and self._times is not None:
            return self._times.time_of(i * params.EMBEDDING_SECONDS * self._times.rate)
        return self._emb_t0 + i * params.EMBEDDING_SECONDS

    def _emit(self, i: int, scores: npt.NDArray[np.float32], origin: float) -> list[Output]:
        t_start = self._embedding_start(i)
        t_end = t_start + params.EMBEDDING_SECONDS
        level = self._levels.level(i) if self._levels is not None else None
        out: list[Output] = [WindowScores(i, t_start, t_end, scores, origin, level)]
        return out + self.tracker.update(t_start, t_end, scores, origin, level)

    def _score(self, embeddings: npt.NDArray[np.uint8], origin: float) -> list[Output]:
        out: list[Output] = []
        if embeddings.shape[0] == 0:
            return out
        self.embeddings += embeddings.shape[0]
        index, windows = self.window.process(embeddings)
        for j, w in zip(index, windows):
            i = int(j)  # the window restarts with the stream, so its index is the stream's
            self._newest = i
            self.windows += 1
            if not self.per_second:
                scores = np.asarray(self.classifier.predict(w[None]), dtype=np.float32).reshape(-1)
                out += self._emit(i, scores, origin)
                continue
            seconds = np.asarray(self.classifier.predict_seconds(w[None]), dtype=np.float32)[0]
            if len(self._window_cols):
                clip = np.asarray(self.classifier.predict(w[None]), dtype=np.float32).reshape(-1)
                seconds = seconds.copy()
                seconds[:, self._window_cols] = clip[self._window_cols]
                for rows, cols in self._recent:
                    recent = np.asarray(self.classifier.predict(w[rows][None]), dtype=np.float32).reshape(-1)
                    seconds[:, cols] = np.maximum(seconds[:, cols], recent[cols])
            self._pending = seconds
            if i >= self.lookahead:
                out += self._emit(i - self.lookahead, seconds[self.window.size - 1 - self.lookahead], origin)
        return out
