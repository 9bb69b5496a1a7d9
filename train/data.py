"""Reading AudioSet embedding tfrecords, label mapping, splits and balancing.

The reader is a ``tf.data`` pipeline that streams files in parallel and never
holds a split in memory, so it scales from ``bal_train`` (22k clips) to the
2-million-clip unbalanced split. Every element carries a status code; bad
input is counted and skipped (or padded), never a crash:

* a file whose records stop early (truncated, or a record failing its CRC) is
  read up to the damage and counted in ``corrupt_files``;
* a record whose bytes are not a SequenceExample is counted in ``bad_records``;
* a clip whose embeddings are not 128 bytes is counted in ``bad_size``;
* a clip with fewer than ``params.WINDOW_EMBEDDINGS`` frames is counted in
  ``short`` and skipped, or padded when ``short="pad"`` (the clip is repeated
  cyclically to 10 frames, so the padding looks like the clip itself).

For ``bal_train``-sized sets :func:`load_clips` materialises the clips into
NumPy arrays (about 30 MB); :func:`make_dataset` is the streaming path for
training on data that does not fit in memory.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import numpy.typing as npt

from pipeline import audioset, params
from pipeline.labels import ClassMap

_LOGGER = logging.getLogger(__name__)

# Status codes carried by every element of the raw pipeline.
OK = 0
SHORT = 1
BAD_SIZE = 2
BAD_RECORD = 3
PADDED = 4

PARSE_BATCH = 256
"""Records parsed per batched ParseSequenceExample call (the fast path)."""
READ_PARALLEL = 16
"""Files read at once."""
_RECORD_OVERHEAD = audioset.RECORD_OVERHEAD
SHORT_POLICIES = ("skip", "pad")


class DataError(ValueError):
    """The data directory or glob holds nothing readable."""


@dataclass
class IngestStats:
    """What the reader saw. ``clips`` counts the clips it delivered."""

    files: int = 0
    corrupt_files: int = 0
    records: int = 0
    clips: int = 0
    bad_records: int = 0
    bad_size: int = 0
    short: int = 0
    padded: int = 0
    corrupt_paths: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["corrupt_paths"] = d["corrupt_paths"][:20]
        return d

    def log(self) -> None:
        _LOGGER.info(
            "read %d clips from %d files (%d corrupt/truncated files, %d unparseable records, "
            "%d clips with wrong embedding size, %d short clips %s)",
            self.clips, self.files, self.corrupt_files, self.bad_records, self.bad_size,
            self.short + self.padded, "padded" if self.padded else "skipped",
        )


@dataclass
class Clips:
    """Clips in memory.

    Attributes:
      x: uint8 ``[N, 10, 128]`` embeddings.
      labels: uint8 ``[N, num_labels]`` AudioSet multi-hot labels (527).
      video_id: ``[N]`` str.
      start: float32 ``[N]`` start time in the video, seconds.
      frames: int32 ``[N]`` frames the clip really had (before padding).
    """

    x: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.uint8]
    video_id: npt.NDArray[np.str_]
    start: npt.NDArray[np.float32]
    frames: npt.NDArray[np.int32]

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, idx: npt.ArrayLike) -> "Clips":
        i = np.asarray(idx)
        return Clips(self.x[i], self.labels[i], self.video_id[i], self.start[i], self.frames[i])

    def targets(self, class_map: ClassMap) -> npt.NDArray[np.uint8]:
        """uint8 ``[N, 4]`` class targets."""
        return class_map.targets(self.labels)


def list_files(data: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Resolves a directory (its ``*.tfrecord``), a glob, a file, or a list of those.

    Raises:
      DataError: nothing matched, naming what was looked for.
    """
    items = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    out: list[Path] = []
    for item in items:
        s = os.fspath(item)
        p = Path(s)
        if p.is_dir():
            out.extend(sorted(p.glob("*.tfrecord")))
        elif p.is_file():
            out.append(p)
        else:
            out.extend(Path(f) for f in sorted(glob.glob(s)) if os.path.isfile(f))
    if not out:
        raise DataError(
            f"no tfrecord files found at {data!r}: pass a directory of *.tfrecord files "
            "(e.g. audioset_v1_embeddings/bal_train), a glob or a file"
        )
    return out


def _parse_batch(records: Any, num_labels: int, short: str) -> dict[str, Any]:
    """Parses a batch of serialized SequenceExamples (all valid, else it raises).

    Returns a dict of batched tensors: ``x`` uint8 [B,10,128], ``labels``
    uint8 [B,num_labels], ``video_id`` string [B], ``start`` float32 [B],
    ``frames`` int32 [B], ``status`` int32 [B], ``nbytes`` int64 [B] (the
    record's size on disk, framing included).
    """
    import tensorflow as tf

    n_win, dims = params.WINDOW_EMBEDDINGS, params.EMBEDDING_SIZE
    context, seq, lengths = tf.io.parse_sequence_example(
        records,
        context_features={
            audioset.VIDEO_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
            audioset.START_TIME: tf.io.FixedLenFeature([], tf.float32, default_value=-1.0),
            audioset.LABELS: tf.io.VarLenFeature(tf.int64),
        },
        sequence_features={
            audioset.AUDIO_EMBEDDING: tf.io.FixedLenSequenceFeature([], tf.string, allow_missing=True),
        },
    )
    emb = seq[audioset.AUDIO_EMBEDDING]  # [B, T] bytes, "" past each clip's end
    frames = tf.cast(lengths[audioset.AUDIO_EMBEDDING], tf.int32)
    t = tf.shape(emb)[1]
    # Keep at most 10 frames; give every clip exactly 10 slots.
    emb = tf.pad(emb[:, :n_win], [[0, 0], [0, tf.maximum(0, n_win - t)]])
    frames = tf.minimum(frames, n_win)
    valid = tf.sequence_mask(frames, n_win)
    sizes = tf.strings.length(emb)
    bad_size = tf.reduce_any(tf.logical_and(valid, tf.not_equal(sizes, dims)), axis=1)
    # Every string to exactly 128 bytes so decode_raw cannot fail on bad sizes.
    fixed = tf.strings.substr(emb + tf.constant(b"\0" * dims), 0, dims)
    x = tf.io.decode_raw(fixed, tf.uint8)  # [B, 10, 128]
    if short == "pad":
        # Repeat the clip cyclically: slot i takes frame i mod frames.
        src = tf.math.floormod(tf.range(n_win)[None, :], tf.maximum(frames, 1)[:, None])
        x = tf.gather(x, src, axis=1, batch_dims=1)
    lab = context[audioset.LABELS]
    keep = (lab.values >= 0) & (lab.values < num_labels)
    ids = tf.boolean_mask(lab.values, keep)
    rows = tf.boolean_mask(lab.indices[:, 0], keep)
    multi = tf.scatter_nd(
        tf.stack([rows, ids], axis=1),
        tf.ones_like(ids, dtype=tf.int32),
        tf.cast(tf.stack([tf.shape(records)[0], num_labels]), tf.int64),
    )
    labels = tf.cast(tf.minimum(multi, 1), tf.uint8)
    is_short = frames < n_win
    status = tf.where(bad_size, BAD_SIZE, tf.where(is_short, PADDED if short == "pad" else SHORT, OK))
    return {
        "x": x,
        "labels": labels,
        "video_id": context[audioset.VIDEO_ID],
        "start": context[audioset.START_TIME],
        "frames": frames,
        "status": tf.cast(status, tf.int32),
        "nbytes": tf.cast(tf.strings.length(records), tf.int64) + _RECORD_OVERHEAD,
    }


def raw_dataset(
    files: Sequence[Path],
    num_labels: int = params.AUDIOSET_NUM_LABELS,
    short: str = "skip",
    parallel: int | None = None,
    deterministic: bool = True,
    batch: int = PARSE_BATCH,
    lossless: bool = True,
) -> Any:
    """The streaming reader: batches of parsed clips WITH status codes.

    Files are read in parallel by one multi-file ``TFRecordDataset``; a file
    that is truncated or fails a CRC ends at the damage (``ignore_errors``)
    and the others go on. Records are parsed a batch at a time; a batch that
    holds a record that is not a SequenceExample is re-parsed record by record
    and the bad record becomes a row with status BAD_RECORD.

    Args:
      files: tfrecord paths.
      num_labels: AudioSet label vocabulary size.
      short: ``"skip"`` or ``"pad"`` for clips of fewer than 10 frames.
      parallel: files read at once (default 16).
      deterministic: keep a reproducible order.
      batch: records parsed per call.
      lossless: re-parse a failing batch record by record inside the
        pipeline (slower). With False a failing batch is dropped and its rows
        are missing from the ``batch_index`` sequence; :func:`iter_batches`
        recovers them afterwards (the fast path).

    Returns:
      A ``tf.data.Dataset`` of dicts (see :func:`_parse_batch`, plus
      ``batch_index`` int64 [B]), every row with its status.
    """
    import tensorflow as tf

    if short not in SHORT_POLICIES:
        raise ValueError(f"short must be one of {SHORT_POLICIES}; got {short!r}")
    autotune = tf.data.AUTOTUNE
    ds = tf.data.TFRecordDataset(
        [os.fspath(f) for f in files], buffer_size=256 * 1024, num_parallel_reads=parallel or READ_PARALLEL
    ).ignore_errors()
    ds = ds.batch(batch).enumerate()

    def parse(i, records):
        return {**_parse_batch(records, num_labels, short), "batch_index": tf.fill(tf.shape(records)[:1], i)}

    if not lossless:
        ds = ds.map(parse, num_parallel_calls=autotune, deterministic=deterministic).ignore_errors()
        return ds.prefetch(autotune)

    def one(record):
        good = tf.data.Dataset.from_tensors(record[None]).map(lambda r: _parse_batch(r, num_labels, short))
        bad = tf.data.Dataset.from_tensors(tf.constant([b""])).map(lambda r: _parse_batch(r, num_labels, short))
        bad = bad.map(lambda d: {**d, "status": tf.fill([1], BAD_RECORD),
                                 "nbytes": tf.cast(tf.strings.length(record), tf.int64)[None] + _RECORD_OVERHEAD})
        return good.ignore_errors().concatenate(bad).take(1)

    def parse_or_fallback(i, records):
        fast = tf.data.Dataset.from_tensors((i, records)).map(parse).ignore_errors()
        slow = tf.data.Dataset.from_tensor_slices(records).flat_map(one).unbatch().batch(batch)
        slow = slow.map(lambda d: {**d, "batch_index": tf.fill(tf.shape(d["status"]), i)})
        return fast.concatenate(slow).take(1)

    ds = ds.interleave(parse_or_fallback, cycle_length=2, num_parallel_calls=autotune, deterministic=deterministic)
    return ds.prefetch(autotune)


def iter_batches(
    data: str | os.PathLike | Sequence[str | os.PathLike],
    stats: IngestStats | None = None,
    **kwargs: Any,
) -> Iterator[dict[str, npt.NDArray]]:
    """Streams NumPy batches of good clips and fills ``stats`` as it goes.

    Args:
      data: a directory, glob, file or list of them.
      stats: updated in place (counts of everything skipped).
      **kwargs: passed to :func:`raw_dataset`.

    Yields:
      dicts of NumPy arrays like :func:`_parse_batch` (status OK or PADDED only).
    """
    files = list_files(data)
    st = stats if stats is not None else IngestStats()
    st.files += len(files)
    expected = sum(os.path.getsize(f) for f in files)
    kwargs = dict(kwargs)
    batch = int(kwargs.get("batch", PARSE_BATCH))
    num_labels = int(kwargs.get("num_labels", params.AUDIOSET_NUM_LABELS))
    short = str(kwargs.get("short", "skip"))
    kwargs.setdefault("lossless", False)
    consumed = 0
    seen_batches: set[int] = set()

    def account(b: dict[str, npt.NDArray]) -> dict[str, npt.NDArray] | None:
        nonlocal consumed
        status = b["status"]
        consumed += int(b["nbytes"].sum())
        st.records += len(status)
        st.bad_records += int(np.sum(status == BAD_RECORD))
        st.bad_size += int(np.sum(status == BAD_SIZE))
        st.short += int(np.sum(status == SHORT))
        st.padded += int(np.sum(status == PADDED))
        good = (status == OK) | (status == PADDED)
        st.clips += int(np.sum(good))
        out = {k: v for k, v in b.items() if k not in ("nbytes", "batch_index")}
        if np.all(good):
            return out
        if np.any(good):
            return {k: v[good] for k, v in out.items()}
        return None

    for b in raw_dataset(files, **kwargs).as_numpy_iterator():
        seen_batches.add(int(b["batch_index"][0]))
        out = account(b)
        if out is not None:
            yield out
    if consumed != expected and not kwargs["lossless"]:
        # A batch whose parse failed (a record that is not a SequenceExample)
        # was dropped by the fast path: find the missing batch numbers and
        # re-parse those batches record by record.
        for k in _missing_batches(files, batch, seen_batches):
            out = account(_recover_batch(files, k, batch, num_labels, short, kwargs.get("parallel")))
            if out is not None:
                yield out
    if consumed != expected:
        # Some file ended before its bytes did: find which (rare, so the
        # per-file re-read costs nothing in the common case).
        st.corrupt_paths = _find_corrupt(files)
        st.corrupt_files = len(st.corrupt_paths)
        for p in st.corrupt_paths[:5]:
            _LOGGER.warning("corrupt or truncated tfrecord (read up to the damage): %s", p)


def _record_batches(files: Sequence[Path], batch: int, parallel: int | None) -> Any:
    import tensorflow as tf

    return tf.data.TFRecordDataset(
        [os.fspath(f) for f in files], buffer_size=256 * 1024, num_parallel_reads=parallel or READ_PARALLEL
    ).ignore_errors().batch(batch)


def _missing_batches(files: Sequence[Path], batch: int, seen: set[int], parallel: int | None = None) -> list[int]:
    """Batch numbers the fast path did not deliver."""
    total = int(_record_batches(files, batch, parallel).reduce(0, lambda n, _: n + 1))
    return [k for k in range(total) if k not in seen]


def _recover_batch(
    files: Sequence[Path], index: int, batch: int, num_labels: int, short: str, parallel: int | None = None
) -> dict[str, npt.NDArray]:
    """Re-reads batch ``index`` and parses it record by record; bad records get BAD_RECORD."""
    import tensorflow as tf

    records = next(iter(_record_batches(files, batch, parallel).skip(index).take(1)))
    rows = []
    for n, r in enumerate(records):
        try:
            rows.append({k: v.numpy() for k, v in _parse_batch(r[None], num_labels, short).items()})
        except (tf.errors.InvalidArgumentError, tf.errors.DataLossError):
            # TF only says the record failed; the project's one reader of the
            # format says why.
            try:
                audioset.parse_clip(r.numpy())
                reason = "tf.io refused it"
            except audioset.RecordError as exc:
                reason = str(exc)
            _LOGGER.warning("batch %d, record %d is not an AudioSet SequenceExample: %s", index, n, reason)
            bad = {k: v.numpy() for k, v in _parse_batch(tf.constant([b""]), num_labels, short).items()}
            bad["status"] = np.array([BAD_RECORD], np.int32)
            bad["nbytes"] = np.array([len(r.numpy()) + _RECORD_OVERHEAD], np.int64)
            rows.append(bad)
    _LOGGER.warning("batch %d held unparseable records; re-parsed it record by record", index)
    return {k: np.concatenate([row[k] for row in rows]) for k in rows[0]}


def _find_corrupt(files: Sequence[Path]) -> list[str]:
    """The files whose readable records end before their bytes do."""
    import tensorflow as tf

    bad = []
    for f in files:
        size = os.path.getsize(f)
        ds = tf.data.TFRecordDataset(os.fspath(f)).ignore_errors()
        n = ds.reduce(tf.constant(0, tf.int64), lambda acc, r: acc + tf.cast(tf.strings.length(r), tf.int64) + _RECORD_OVERHEAD)
        if int(n) != size:
            bad.append(os.fspath(f))
    return bad


def load_clips(
    data: str | os.PathLike | Sequence[str | os.PathLike],
    short: str = "skip",
    num_labels: int = params.AUDIOSET_NUM_LABELS,
    stats: IngestStats | None = None,
    parallel: int | None = None,
    only_val: float | None = None,
) -> tuple[Clips, IngestStats]:
    """Reads every good clip into memory (for bal_train-sized data).

    Args:
      data: a directory of ``*.tfrecord``, a glob, a file or a list.
      short: ``"skip"`` or ``"pad"`` clips with fewer than 10 frames.
      num_labels: AudioSet label vocabulary size.
      stats: filled in place if given.
      parallel: files read at once (default AUTOTUNE).
      only_val: keep only the validation side of :func:`grouped_split` with
        this fraction (memory then holds only that side).

    Returns:
      ``(clips, stats)``; clips in a deterministic order.

    Raises:
      DataError: no files matched.
    """
    st = stats if stats is not None else IngestStats()
    parts = []
    for b in iter_batches(data, st, short=short, num_labels=num_labels, parallel=parallel):
        if only_val is not None:
            keep = validation_mask(b["video_id"], only_val)
            b = {k: v[keep] for k, v in b.items()}
        parts.append(b)
    if parts:
        cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    else:
        cat = {
            "x": np.zeros((0, params.WINDOW_EMBEDDINGS, params.EMBEDDING_SIZE), np.uint8),
            "labels": np.zeros((0, num_labels), np.uint8),
            "video_id": np.zeros((0,), object),
            "start": np.zeros((0,), np.float32),
            "frames": np.zeros((0,), np.int32),
        }
    clips = Clips(
        x=cat["x"],
        labels=cat["labels"],
        video_id=np.array([v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in cat["video_id"]]),
        start=cat["start"].astype(np.float32),
        frames=cat["frames"].astype(np.int32),
    )
    st.log()
    return clips, st


def grouped_split(
    video_ids: Sequence[str] | npt.NDArray, val_fraction: float = 0.2, salt: str = "audiocap"
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """A deterministic train/validation split grouped by video.

    A clip goes to validation when a hash of ``salt + video_id`` falls below
    ``val_fraction``: every clip of one video lands on the same side, and the
    assignment of a video does not depend on what else is in the data (so it is
    stable across runs, machines and subsets).

    Returns:
      ``(train_idx, val_idx)`` int64 index arrays.
    """
    val = validation_mask(video_ids, val_fraction, salt)
    return np.flatnonzero(~val), np.flatnonzero(val)


def validation_mask(
    video_ids: Sequence[str] | npt.NDArray, val_fraction: float = 0.2, salt: str = "audiocap"
) -> npt.NDArray[np.bool_]:
    """``[N]`` bool: the clips :func:`grouped_split` puts on the validation side."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1); got {val_fraction}")
    u = np.array(
        [
            int.from_bytes(
                hashlib.sha1(f"{salt}:{v.decode('utf-8', 'replace') if isinstance(v, bytes) else v}".encode()).digest()[:8],
                "big",
            ) / 2.0**64
            for v in video_ids
        ],
        dtype=np.float64,
    )
    return u < val_fraction


def random_split(n: int, val_fraction: float, seed: int = 0) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The paper's split: a plain random permutation of rows (not grouped)."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_val = int(round(n * val_fraction))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def permutation_oversample(
    x: npt.NDArray[np.uint8], y: npt.NDArray, seed: int = 0, target: str = "max"
) -> tuple[npt.NDArray[np.uint8], npt.NDArray, npt.NDArray[np.int64]]:
    """The paper's oversampling: copies of rare-class clips with their 10 seconds shuffled.

    Each class is brought up to the count of the most frequent class by adding
    copies of its clips whose frame order is randomly permuted. Multi-label
    clips count for every class they carry; copies are drawn from the clips of
    the class being filled.

    Args:
      x: uint8 ``[N, 10, 128]``.
      y: ``[N, C]`` 0/1 targets.
      seed: random seed.
      target: ``"max"`` (fill up to the largest class).

    Returns:
      ``(x_aug [M, 10, 128], y_aug [M, C], source [M])``: the originals first,
      then the copies; ``source`` is the row each came from.
    """
    if target != "max":
        raise ValueError(f"target must be 'max'; got {target!r}")
    rng = np.random.default_rng(seed)
    counts = y.sum(axis=0).astype(np.int64)
    goal = int(counts.max()) if len(counts) else 0
    src = [np.arange(len(x))]
    for c in range(y.shape[1]):
        rows = np.flatnonzero(y[:, c])
        need = goal - int(counts[c])
        if need > 0 and len(rows):
            src.append(rng.choice(rows, size=need, replace=True))
    source = np.concatenate(src)
    extra = source[len(x):]
    perms = np.argsort(rng.random((len(extra), x.shape[1])), axis=1)
    x_extra = np.take_along_axis(x[extra], perms[:, :, None], axis=1)
    return np.concatenate([x, x_extra]), np.concatenate([y, y[extra]]), source


def class_weights(y: npt.NDArray) -> npt.NDArray[np.float32]:
    """Per-class positive weights ``n_neg / n_pos`` (clipped to [1, 100]), float32 ``[C]``."""
    pos = y.sum(axis=0).astype(np.float64)
    neg = len(y) - pos
    return np.clip(neg / np.maximum(pos, 1.0), 1.0, 100.0).astype(np.float32)


def make_dataset(
    data: str | os.PathLike | Sequence[str | os.PathLike],
    class_map: ClassMap,
    batch_size: int = 256,
    shuffle: int = 10000,
    short: str = "skip",
    aux_labels: bool = False,
    repeat: bool = False,
    seed: int = 0,
    exclude_val: float | None = None,
) -> Any:
    """A streaming ``(x, y)`` dataset for ``model.fit`` on data too big for memory.

    Args:
      data: directory/glob/file(s).
      class_map: the four classes.
      batch_size: output batch size.
      shuffle: shuffle buffer in clips (0: no shuffle).
      short: ``"skip"`` or ``"pad"``.
      aux_labels: also yield the 527 AudioSet labels (``y`` becomes a dict
        ``{"classes": [B,4], "audioset": [B,527]}``).
      repeat: repeat forever.
      seed: shuffle seed.
      exclude_val: drop the clips that :func:`grouped_split` with this
        validation fraction puts on the validation side (training side only).

    Returns:
      ``tf.data.Dataset`` of ``(uint8 [B,10,128], float32 [B,4])``. Bad clips
      are dropped; use :func:`iter_batches` when you need their counts.
    """
    import tensorflow as tf

    files = list_files(data)
    mat = tf.constant(class_map.matrix())
    ds = raw_dataset(files, num_labels=class_map.num_labels, short=short, deterministic=False).unbatch()
    ds = ds.filter(lambda e: (e["status"] == OK) | (e["status"] == PADDED))
    if exclude_val is not None:
        # The same hash as grouped_split (SHA-1 of the video id), so the
        # streamed training side and an in-memory validation side never meet.
        def on_train_side(vid):
            return not bool(validation_mask([vid.numpy()], exclude_val)[0])

        ds = ds.filter(lambda e: tf.py_function(on_train_side, [e["video_id"]], tf.bool))
    if shuffle:
        ds = ds.shuffle(shuffle, seed=seed)
    if repeat:
        ds = ds.repeat()

    def to_xy(e):
        lab = tf.cast(e["labels"], tf.float32)
        y = tf.cast(tf.matmul(lab, mat) > 0, tf.float32)
        if aux_labels:
            return e["x"], {"classes": y, "audioset": lab}
        return e["x"], y

    return ds.batch(batch_size).map(to_xy, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
