"""The worker thread's view of the caption chain: source blocks in, scores and events out.

The chain itself is :class:`pipeline.chain.CaptionChain` (shared with the
caption timeline evaluation, so what is measured is what the daemon runs);
this wrapper only routes the sources' block types to it.
"""

from __future__ import annotations

from daemon.sources import AudioBlock, Block, StreamBreak
from pipeline import chain as _chain
from pipeline.chain import Output, WindowScores

__all__ = ["CaptionChain", "Output", "WindowScores"]


class CaptionChain(_chain.CaptionChain):
    """:class:`pipeline.chain.CaptionChain` fed with the sources' blocks."""

    def feed(self, block: Block) -> list[Output]:
        """Processes one block; returns its scores and events, in time order."""
        if isinstance(block, StreamBreak):
            return self.end_stream(block.available)
        if isinstance(block, AudioBlock):
            return self.feed_audio(block.samples, block.sample_rate, block.t0, block.available, block.stream)
        return self.feed_embeddings(block.embeddings, block.t0, block.available, block.stream)
