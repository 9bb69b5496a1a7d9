"""The classifier's rolling window: the last 10 embeddings, one step per embedding.

A window is ``uint8 [10, 128]``, oldest embedding first, exactly like one
AudioSet clip. The daemon scores a window every time a new embedding arrives,
so the captions advance every 0.96 s.

Partial windows. At the start of a stream (and after the microphone was
re-opened) fewer than 10 embeddings exist. Rather than wait 9.6 s for the first
caption, :func:`fill_window` tiles the ``k`` embeddings it has (oldest first,
repeated cyclically) to fill the 10 slots. Tiling keeps the statistics of the
sound actually heard; zero padding would not (a zero byte is the extreme
``-2`` of the PCA range, a sound that never occurs). For a classifier that
pools over time, a tiled window of one embedding scores like ten seconds of
that same second of sound.

Per-second scoring (``pad="edge"``) needs the newest embeddings to stay at the
end of the window, since position ``9 - L`` is read as "L seconds ago": there
the oldest embedding is repeated in front instead (``e0 e0 .. e0 e1 .. ek-1``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from pipeline import params


PADDING = ("tile", "edge")
"""How a partial window is filled: repeat the embeddings cyclically, or repeat the oldest in front."""


def fill_window(
    embeddings: npt.ArrayLike, size: int = params.WINDOW_EMBEDDINGS, pad: str = "tile"
) -> npt.NDArray[np.uint8]:
    """Builds one window from the last ``size`` of ``embeddings``.

    Args:
      embeddings: uint8 ``[k, 128]`` with ``k >= 1``, oldest first.
      size: window length in embeddings.
      pad: ``"tile"`` or ``"edge"``, for ``k < size`` (see the module doc).

    Returns:
      uint8 ``[size, 128]``: the last ``size`` embeddings, or, when ``k < size``,
      the ``k`` embeddings repeated cyclically (``e0 e1 .. ek-1 e0 e1 ..``,
      ``"tile"``) or the oldest repeated in front (``e0 .. e0 e1 .. ek-1``, ``"edge"``).

    Raises:
      ValueError: for an empty input, a wrong shape or dtype, or an unknown ``pad``.
    """
    if pad not in PADDING:
        raise ValueError(f"pad must be one of {PADDING}; got {pad!r}")
    x = np.asarray(embeddings)
    if x.ndim != 2 or x.shape[1] != params.EMBEDDING_SIZE or x.dtype != np.uint8:
        raise ValueError(
            f"window embeddings must be uint8 [k, {params.EMBEDDING_SIZE}]; got {x.dtype} {x.shape}"
        )
    k = x.shape[0]
    if k == 0:
        raise ValueError("cannot build a window from zero embeddings")
    if k >= size:
        return np.ascontiguousarray(x[k - size :])
    if pad == "edge":
        return np.ascontiguousarray(x[np.maximum(np.arange(size) - (size - k), 0)])
    return np.ascontiguousarray(x[np.arange(size) % k])


class RollingWindow:
    """Keeps the last ``size`` embeddings of a stream and emits one window per embedding.

    ``process(embeddings)`` returns one window for every embedding it was given,
    so the windows of a stream do not depend on how the embeddings were grouped.

    Args:
      size: window length in embeddings.
      min_embeddings: no window is emitted until the stream holds this many
        embeddings (1 = score from the first embedding, padded).
      pad: how partial windows are filled (:data:`PADDING`).
    """

    def __init__(
        self,
        size: int = params.WINDOW_EMBEDDINGS,
        min_embeddings: int = params.WINDOW_MIN_EMBEDDINGS,
        pad: str = "tile",
    ) -> None:
        if pad not in PADDING:
            raise ValueError(f"pad must be one of {PADDING}; got {pad!r}")
        self.pad = pad
        if size < 1 or not 1 <= min_embeddings <= size:
            raise ValueError(
                f"need size >= 1 and 1 <= min_embeddings <= size; got size={size}, "
                f"min_embeddings={min_embeddings}"
            )
        self.size = size
        self.min_embeddings = min_embeddings
        self.reset()

    def reset(self) -> None:
        """Forgets the stream (after a gap the old sound no longer belongs to the window)."""
        self._buf = np.zeros((0, params.EMBEDDING_SIZE), dtype=np.uint8)
        self._seen = 0

    @property
    def embeddings_seen(self) -> int:
        """Embeddings received since the last reset."""
        return self._seen

    def process(
        self, embeddings: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8]]:
        """Adds embeddings; returns the windows they complete.

        Args:
          embeddings: uint8 ``[k, 128]``, in stream order.

        Returns:
          ``(index, windows)``: ``index`` int64 ``[m]`` is the stream index of the
          newest embedding of each window, ``windows`` uint8 ``[m, size, 128]``.
          ``m == k`` once ``min_embeddings`` have arrived.
        """
        x = np.asarray(embeddings)
        if x.ndim != 2 or x.shape[1] != params.EMBEDDING_SIZE or x.dtype != np.uint8:
            raise ValueError(
                f"embeddings must be uint8 [k, {params.EMBEDDING_SIZE}]; got {x.dtype} {x.shape}"
            )
        index, windows = [], []
        for row in x:
            keep = self._buf[max(0, self._buf.shape[0] - (self.size - 1)) :]
            self._buf = np.concatenate([keep, row[None]])
            self._seen += 1
            if self._seen >= self.min_embeddings:
                index.append(self._seen - 1)
                windows.append(fill_window(self._buf, self.size, self.pad))
        if not windows:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.size, params.EMBEDDING_SIZE), np.uint8)
        return np.asarray(index, dtype=np.int64), np.stack(windows)
