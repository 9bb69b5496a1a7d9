"""Audio blocks at any rate -> uint8 AudioSet-format embeddings, streaming.

Chains :class:`pipeline.audio.StreamingResampler`,
:class:`pipeline.frontend.StreamingFrontend`, a VGGish callable and
:class:`pipeline.postprocess.Postprocessor`. Every stage is invariant to how
the audio is split, so feeding a recording in blocks of any size gives
bit-identical embeddings to feeding it at once.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import numpy.typing as npt

from pipeline import audio, params
from pipeline.frontend import StreamingFrontend
from pipeline.postprocess import Postprocessor

EmbeddingFn = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]


class Embedder:
    """Streams audio into AudioSet-format embeddings.

    Args:
      vggish: maps float32 ``[N, 96, 64]`` to float32 ``[N, 128]`` (e.g.
        :func:`pipeline.vggish.load_vggish`'s result, or a LiteRT runner).
      postprocessor: the PCA/quantisation stage.
      sample_rate: rate of the incoming blocks, Hz.
      resample_filter: resampy filter name.
    """

    def __init__(
        self,
        vggish: EmbeddingFn,
        postprocessor: Postprocessor,
        sample_rate: int,
        resample_filter: str = params.RESAMPLE_FILTER,
    ) -> None:
        self.vggish = vggish
        self.postprocessor = postprocessor
        self.sample_rate = int(sample_rate)
        self._resampler = audio.StreamingResampler(self.sample_rate, params.SAMPLE_RATE, resample_filter)
        self._frontend = StreamingFrontend()

    def reset(self) -> None:
        """Starts a new stream (e.g. after the microphone was re-opened)."""
        self._resampler.reset()
        self._frontend.reset()

    @property
    def embeddings_done(self) -> int:
        """Embeddings returned since the stream started; embedding ``i`` covers
        stream time ``[i * 0.96 s, i * 0.96 s + 0.975 s)``."""
        return self._frontend.examples_done

    def process(self, block: npt.ArrayLike) -> npt.NDArray[np.uint8]:
        """Takes ``[n]`` or ``[n, channels]`` int16/int32/float audio at
        ``sample_rate``; returns the uint8 ``[k, 128]`` embeddings it completed."""
        mono = audio.condition(block)
        return self._embed(self._resampler.process(mono))

    def flush(self) -> npt.NDArray[np.uint8]:
        """Ends the stream: returns embeddings the resampler's tail completes."""
        return self._embed(self._resampler.flush())

    def _embed(self, x16k: npt.NDArray[np.float64]) -> npt.NDArray[np.uint8]:
        examples = self._frontend.process(x16k)
        if examples.shape[0] == 0:
            return np.zeros((0, params.EMBEDDING_SIZE), dtype=np.uint8)
        # One example per call: a batch's size changes the CNN's float rounding,
        # and streaming must equal batch bit for bit.
        raw = np.concatenate([self.vggish(examples[i : i + 1]) for i in range(examples.shape[0])])
        return self.postprocessor.postprocess(raw)

    def embed(self, samples: npt.ArrayLike) -> npt.NDArray[np.uint8]:
        """Batch form: one whole recording -> uint8 ``[N, 128]`` (resets the stream)."""
        self.reset()
        out = [self.process(samples), self.flush()]
        self.reset()
        return np.concatenate(out)
