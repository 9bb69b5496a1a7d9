"""Synthetic sound scenes: AudioSet clips played one after another, as a room would hear them.

A *stream* is a sequence of *scenes*. A scene is 1 to 3 consecutive clips of
one *kind*: clips carrying exactly one of the classes (that class is the
kind), or clips carrying none of them (kind ``NONE``). Scenes come in random
order, never two of the same kind in a row, so every scene boundary is a
change of sound. Clips with two or more of the classes are left out (their
scene would have no single kind), unless the stream is *mixed*: then such a
clip joins the scenes of the rarest class it carries, and its embeddings
carry all its classes. A class set with rare classes needs this: most clips
of a knock or a crying baby also carry Speech, so without it the rare
classes barely appear in a stream.

Every embedding of a clip carries that clip's labels: this is the ground truth
of the caption timeline (``train.timeline``), and the per-second target of the
stream-trained models (``train.models``). Clips keep their real length
(``Clips.frames``), so a 7-frame clip adds 7 embeddings.

Pure NumPy; the same code builds the training streams (from the training side
of the grouped split) and the validation timeline (from its validation side).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pipeline import params

NONE = -1
"""The kind of a scene whose clips carry none of the classes."""
MIN_CLIPS = 1
MAX_CLIPS = 3
"""Clips per scene, drawn uniformly from this range."""


@dataclass(frozen=True)
class Stream:
    """A stream of embeddings with its per-embedding ground truth.

    Attributes:
      embeddings: uint8 ``[T, 128]``, one per 0.96 s.
      labels: uint8 ``[T, C]``: the classes of the clip each embedding belongs to.
      clip: int64 ``[T]``: index of that clip in the clip set it was drawn from.
      scene: int64 ``[T]``: scene number, from 0.
      kinds: int64 ``[S]``: each scene's kind (a class index or ``NONE``).
    """

    embeddings: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.uint8]
    clip: npt.NDArray[np.int64]
    scene: npt.NDArray[np.int64]
    kinds: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def seconds(self) -> float:
        """Audio length of the stream."""
        return len(self) * params.EMBEDDING_SECONDS

    def clip_order(self) -> npt.NDArray[np.int64]:
        """The clip indices in the order they are played (each once per appearance)."""
        starts = np.flatnonzero(np.r_[True, self.clip[1:] != self.clip[:-1]])
        return self.clip[starts]


MIXED = -2
"""The kind :func:`clip_kinds` gives a clip with several classes (left out of unmixed streams)."""


def is_large_class_set(num_classes: int) -> bool:
    """True for class sets beyond the default four: their streams are mixed and
    go on when a kind runs out (``build_stream(mixed=True, exhaust=True)``)."""
    return num_classes > len(params.CLASS_NAMES)


def clip_kinds(y: npt.ArrayLike, mixed: bool = False) -> npt.NDArray[np.int64]:
    """Each clip's scene kind.

    Args:
      y: ``[N, C]`` 0/1 class targets.
      mixed: give a clip with several classes the kind of the rarest of them
        (the class with the fewest clips in ``y``; ties go to the lower index).

    Returns:
      int64 ``[N]``: the class index for clips with exactly one class, ``NONE``
      for clips with none; for clips with several, :data:`MIXED` (not used
      in scenes), or with ``mixed`` their rarest class.
    """
    t = np.asarray(y) > 0
    n = t.sum(axis=1)
    out = np.where(n == 0, NONE, MIXED).astype(np.int64)
    one = n == 1
    out[one] = np.argmax(t[one], axis=1)
    if mixed:
        many = n > 1
        count = t.sum(axis=0).astype(np.float64)
        # Among each clip's classes, the one with the fewest clips.
        rarity = np.where(t[many], count[None, :], np.inf)
        out[many] = np.argmin(rarity, axis=1)
    return out


def build_stream(
    x: npt.NDArray[np.uint8],
    frames: npt.ArrayLike,
    y: npt.ArrayLike,
    rng: np.random.Generator,
    max_scenes: int | None = None,
    min_clips: int = MIN_CLIPS,
    max_clips: int = MAX_CLIPS,
    reuse: bool = False,
    exhaust: bool = False,
    mixed: bool = False,
) -> Stream:
    """Builds one stream of scenes from a clip set.

    Args:
      x: uint8 ``[N, 10, 128]`` clips (short ones padded).
      frames: ``[N]`` frames each clip really has; only those are played.
      y: ``[N, C]`` 0/1 class targets.
      rng: the random generator (the stream is a function of its state).
      max_scenes: stop after this many scenes (``None``: until the clips run out).
      min_clips, max_clips: clips per scene, uniformly.
      reuse: draw clips with replacement (training streams of any length);
        otherwise each clip is played at most once and the stream ends as
        soon as one kind has no clips left (so every kind stays equally likely).
      exhaust: without ``reuse``, go on instead: a kind that runs out drops
        out and the others go on, until one kind is left (for class sets with
        rare classes, whose few clips would otherwise end the stream after a
        few scenes).
      mixed: clips with several classes join the scenes of their rarest
        class (:func:`clip_kinds`) instead of being left out.

    Returns:
      The :class:`Stream`.

    Raises:
      ValueError: for mismatched shapes, a bad clip range, or no usable clip.
    """
    x = np.asarray(x)
    frames = np.asarray(frames, dtype=np.int64)
    y = np.asarray(y)
    if x.ndim != 3 or x.shape[1:] != (params.WINDOW_EMBEDDINGS, params.EMBEDDING_SIZE) or x.dtype != np.uint8:
        raise ValueError(f"clips must be uint8 [N, {params.WINDOW_EMBEDDINGS}, {params.EMBEDDING_SIZE}]; got {x.dtype} {x.shape}")
    if frames.shape != (x.shape[0],) or y.ndim != 2 or y.shape[0] != x.shape[0]:
        raise ValueError(f"frames [N] and y [N, C] must match {x.shape[0]} clips; got {frames.shape} and {y.shape}")
    if not 1 <= min_clips <= max_clips:
        raise ValueError(f"need 1 <= min_clips <= max_clips; got {min_clips}, {max_clips}")
    kinds = clip_kinds(y, mixed=mixed)
    pools = {k: list(rng.permutation(np.flatnonzero(kinds == k))) for k in [NONE, *range(y.shape[1])]}
    pools = {k: v for k, v in pools.items() if v}
    if not pools:
        raise ValueError("no clip carries exactly one class or none of them"
                         + ("" if mixed else " (mixed=True would use clips with several)"))
    full = {k: list(v) for k, v in pools.items()}
    order: list[int] = []
    scene_of: list[int] = []
    scene_kinds: list[int] = []
    last: int | None = None
    while max_scenes is None or len(scene_kinds) < max_scenes:
        if not reuse and not all(pools.values()):
            if not exhaust:
                break
            pools = {k: v for k, v in pools.items() if v}
            if not pools:
                break
        choices = [k for k in pools if k != last]
        if not choices:
            break
        kind = int(choices[rng.integers(len(choices))])
        count = int(rng.integers(min_clips, max_clips + 1))
        picked = []
        for _ in range(count):
            if not pools[kind]:
                if not reuse:
                    break
                pools[kind] = list(rng.permutation(full[kind]))
            picked.append(int(pools[kind].pop()))
        order += picked
        scene_of += [len(scene_kinds)] * len(picked)
        scene_kinds.append(kind)
        last = kind
    clips = np.asarray(order, dtype=np.int64)
    n = frames[clips].clip(1, params.WINDOW_EMBEDDINGS)
    clip_per_emb = np.repeat(clips, n)
    pos = np.arange(len(clip_per_emb)) - np.repeat(np.cumsum(n) - n, n)
    targets = (y[clip_per_emb] > 0).astype(np.uint8)
    return Stream(
        embeddings=np.ascontiguousarray(x[clip_per_emb, pos]),
        labels=targets,
        clip=clip_per_emb,
        scene=np.repeat(np.asarray(scene_of, dtype=np.int64), n),
        kinds=np.asarray(scene_kinds, dtype=np.int64),
    )


def stream_windows(
    stream: Stream, size: int = params.WINDOW_EMBEDDINGS, step: int = 1
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """All windows of a stream, as the daemon's rolling window sees them.

    Args:
      stream: the stream.
      size: window length.
      step: embeddings between window starts.

    Returns:
      ``(windows, targets)``: uint8 ``[W, size, 128]`` and uint8
      ``[W, size, C]`` (each second's labels), windows fully inside the stream.
    """
    t = len(stream)
    if t < size:
        raise ValueError(f"stream of {t} embeddings is shorter than one window ({size})")
    starts = np.arange(0, t - size + 1, step)
    idx = starts[:, None] + np.arange(size)[None]
    return stream.embeddings[idx], stream.labels[idx]
