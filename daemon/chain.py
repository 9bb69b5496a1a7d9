"""The live pipeline the worker thread owns: blocks -> embeddings -> windows -> scores -> events.

:class:`CaptionChain` is single-threaded and has no I/O: it takes a block and
returns what the block produced (window scores and caption events), each with
its audio-clock time. The service hands the outputs to the sinks; tests and the
benchmark drive the chain directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Union

import numpy as np
import numpy.typing as npt

from daemon.sources import AudioBlock, Block, StreamBreak
from pipeline import params
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
    """

    index: int
    t_start: float
    t_end: float
    scores: npt.NDArray[np.float32]
    origin: float


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
    """Turns a source's blocks into window scores and caption events.

    Args:
      classifier: ``predict(uint8 [B, 10, 128]) -> float32 [B, C]``; called
        with one window at a time, so results do not depend on batching.
      tracker: the event tracker (owns thresholds and captions).
      make_embedder: ``sample_rate -> Embedder`` for audio blocks (``None`` if
        only embedding blocks will arrive).
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
        self.window = RollingWindow(window)
        self._stream: int | None = None
        self._embedder: Any = None
        self._times: _TimeMap | None = None
        self._emb_t0: float = 0.0  # embedding streams: time of embedding 0
        self._emb_count = 0
        self._last_end: float | None = None
        self._last_origin = 0.0
        self.embeddings = 0
        self.windows = 0

    def feed(self, block: Block) -> list[Output]:
        """Processes one block; returns its window scores and events, in time order."""
        out: list[Output] = []
        if isinstance(block, StreamBreak):
            return self.end_stream(block.available)
        if block.stream != self._stream:
            if self._stream is not None:
                out += self.end_stream(block.available)
            self._start_stream(block)
        self._last_origin = block.available
        if isinstance(block, AudioBlock):
            if self._times is None or self._times.rate != block.sample_rate:
                raise ValueError(
                    f"stream {block.stream} changed rate to {block.sample_rate} Hz; a new rate needs a new stream"
                )
            self._times.add(block.samples.shape[0], block.t0)
            embeddings = self._embedder.process(block.samples)
            self._last_end = self._times.end_time
        else:
            if self._emb_count == 0:
                self._emb_t0 = block.t0
            embeddings = block.embeddings
            self._last_end = block.t0 + block.embeddings.shape[0] * params.EMBEDDING_SECONDS
        out += self._score(embeddings, block.available, from_audio=isinstance(block, AudioBlock))
        return out

    def end_stream(self, origin: float | None = None) -> list[Output]:
        """Ends the current stream: the resampler's tail, then open events are ended."""
        out: list[Output] = []
        if self._stream is None:
            return out
        origin = self._last_origin if origin is None else origin
        if self._embedder is not None:
            tail = self._embedder.flush()
            out += self._score(tail, origin, from_audio=True)
        if self._last_end is not None:
            out += self.tracker.finish(self._last_end, origin)
        self._stream = None
        self._embedder = None
        self._times = None
        self._emb_count = 0
        self._last_end = None
        self.window.reset()
        return out

    def _start_stream(self, block: Block) -> None:
        self._stream = block.stream
        self.window.reset()
        self._emb_count = 0
        if isinstance(block, AudioBlock):
            if self.make_embedder is None:
                raise ValueError("this chain was built without an embedder and cannot take audio blocks")
            self._embedder = self.make_embedder(block.sample_rate)
            self._times = _TimeMap(block.sample_rate)
        else:
            self._embedder = None
            self._times = None

    def _embedding_start(self, i: int, from_audio: bool) -> float:
        if from_audio and self._times is not None:
            return self._times.time_of(i * params.EMBEDDING_SECONDS * self._times.rate)
        return self._emb_t0 + i * params.EMBEDDING_SECONDS

    def _score(self, embeddings: npt.NDArray[np.uint8], origin: float, from_audio: bool) -> list[Output]:
        out: list[Output] = []
        if embeddings.shape[0] == 0:
            return out
        self._emb_count += embeddings.shape[0]
        self.embeddings += embeddings.shape[0]
        index, windows = self.window.process(embeddings)
        for j, w in zip(index, windows):
            scores = np.asarray(self.classifier.predict(w[None]), dtype=np.float32).reshape(-1)
            i = int(j)  # the window restarts with the stream, so its index is the stream's
            t_start = self._embedding_start(i, from_audio)
            t_end = t_start + params.EMBEDDING_SECONDS
            self.windows += 1
            out.append(WindowScores(i, t_start, t_end, scores, origin))
            out += self.tracker.update(t_start, t_end, scores, origin)
        return out
