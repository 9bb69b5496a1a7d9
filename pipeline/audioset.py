"""The AudioSet embedding tfrecord format, read without TensorFlow.

One definition of the release format for the whole project: the daemon's
replay source reads clips with :func:`iter_clips`, and ``train.data`` takes
its ``tf.io`` parse spec from the feature-name constants below (and checks
records with :func:`parse_clip` when it re-parses a failed batch).

The replay source runs on the edge profile too, where TensorFlow is not
installed, so the TFRecord framing and the few protobuf messages involved
(``tf.train.SequenceExample``) are decoded here with the standard library.

TFRecord framing: ``uint64 length | uint32 masked_crc32c(length) | data |
uint32 masked_crc32c(data)``, little-endian.

Malformed input never raises out of :func:`iter_clips`: a record whose
checksum or content is wrong is skipped and counted. A length is checked
against the bytes the file has before anything is read, so a length header of
2^40 or 2^63 allocates nothing. When the framing itself is lost (a length whose
own checksum fails), the reader scans forward to the next intact record and
goes on from there, counting the damaged region once.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import numpy.typing as npt

from pipeline import params

_LOGGER = logging.getLogger(__name__)

# --- Feature names of the release (context and feature list of each SequenceExample) --------

VIDEO_ID = "video_id"
"""Context: the YouTube id (bytes)."""
START_TIME = "start_time_seconds"
"""Context: where the clip starts in the video (float)."""
END_TIME = "end_time_seconds"
"""Context: where the clip ends in the video (float)."""
LABELS = "labels"
"""Context: AudioSet label indices (int64 list)."""
AUDIO_EMBEDDING = "audio_embedding"
"""Feature list: one 128-byte quantised embedding per ~0.96 s frame."""

RECORD_OVERHEAD = 16
"""Bytes of framing around each record's data: length, its CRC, the data CRC."""
_HEADER = 12


def _crc32c_table() -> list[int]:
    poly = 0x82F63B78  # Castagnoli, reflected
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The TFRecord checksum: CRC-32C rotated right by 15 bits plus a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """``data`` framed as one TFRecord (length, checksums)."""
    head = struct.pack("<Q", len(data))
    return head + struct.pack("<I", masked_crc32c(head)) + data + struct.pack("<I", masked_crc32c(data))


class RecordError(ValueError):
    """A record is corrupt (checksum, framing or content)."""


def _header_at(buf: mmap.mmap | bytes, pos: int, size: int) -> int | None:
    """The data length of an intact header at ``pos`` that fits in the file, else ``None``."""
    if pos + RECORD_OVERHEAD > size:
        return None
    (length,) = struct.unpack_from("<Q", buf, pos)
    if length > size - pos - RECORD_OVERHEAD:  # cheap test first: it rules out almost every offset
        return None
    (length_crc,) = struct.unpack_from("<I", buf, pos + 8)
    if masked_crc32c(buf[pos : pos + 8]) != length_crc:
        return None
    return length


def _resync(buf: mmap.mmap | bytes, start: int, size: int) -> int:
    """The offset of the next record whose header and data checksums hold, or ``size``."""
    for pos in range(start, size - RECORD_OVERHEAD + 1):
        length = _header_at(buf, pos, size)
        if length is None:
            continue
        data_end = pos + _HEADER + length
        (data_crc,) = struct.unpack_from("<I", buf, data_end)
        if masked_crc32c(buf[pos + _HEADER : data_end]) == data_crc:
            return pos
    return size


def iter_records(path: str | os.PathLike) -> Iterator[bytes | RecordError]:
    """Yields each record's bytes, or a :class:`RecordError` for a corrupt one.

    A bad data checksum skips that record; a lost framing (bad length checksum,
    or a length beyond the end of the file) skips to the next intact record;
    a file that ends inside a record ends there. Each is yielded as one error.

    Raises:
      OSError: the file cannot be opened or mapped.
    """
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return
        # A map, not reads: no buffer is ever sized from a length field.
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            pos, index = 0, 0
            while pos < size:
                if size - pos < RECORD_OVERHEAD:
                    yield RecordError(f"{path}: record {index}: file ends {size - pos} byte(s) into a record "
                                      f"(read {pos} of {size} bytes)")
                    return
                length = _header_at(buf, pos, size)
                if length is None:
                    (claimed,) = struct.unpack_from("<Q", buf, pos)
                    nxt = _resync(buf, pos + 1, size)
                    (length_crc,) = struct.unpack_from("<I", buf, pos + 8)
                    if masked_crc32c(buf[pos : pos + 8]) == length_crc and nxt == size:
                        yield RecordError(f"{path}: record {index}: length {claimed} is beyond the end of the "
                                          f"file (truncated; read {pos} of {size} bytes)")
                    else:
                        yield RecordError(f"{path}: record {index}: framing lost at byte {pos}; skipped "
                                          f"{nxt - pos} byte(s) to the next intact record")
                    pos, index = nxt, index + 1
                    continue
                data_end = pos + _HEADER + length
                data = buf[pos + _HEADER : data_end]
                (data_crc,) = struct.unpack_from("<I", buf, data_end)
                if masked_crc32c(data) != data_crc:
                    yield RecordError(f"{path}: record {index}: bad data checksum")
                else:
                    yield data
                pos, index = data_end + 4, index + 1


# --- Protocol buffer wire format --------------------------------------------------

def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise RecordError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise RecordError("varint too long")


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yields ``(field_number, wire_type, value)``; value is int or bytes."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, wire, value
            continue
        if wire == 1:
            n = 8
        elif wire == 5:
            n = 4
        elif wire == 2:
            n, pos = _varint(buf, pos)
        else:
            raise RecordError(f"unsupported wire type {wire}")
        if n > end - pos:
            raise RecordError(f"field {number} runs past the end of its message")
        yield number, wire, buf[pos : pos + n]
        pos += n


def _feature(buf: bytes) -> tuple[str, list]:
    """``tf.train.Feature`` -> ``(kind, values)`` with kind bytes/float/int64."""
    for number, wire, value in _fields(buf):
        if wire != 2:
            continue
        if number == 1:  # BytesList
            return "bytes", [v for n, w, v in _fields(value) if n == 1 and w == 2]
        if number == 2:  # FloatList (packed or not)
            out: list = []
            for n, w, v in _fields(value):
                if n == 1 and w == 2:
                    if len(v) % 4:  # type: ignore[arg-type]
                        raise RecordError(f"packed float list of {len(v)} bytes is not a multiple of 4")  # type: ignore[arg-type]
                    out.extend(struct.unpack(f"<{len(v) // 4}f", v))  # type: ignore[arg-type]
                elif n == 1 and w == 5:
                    out.append(struct.unpack("<f", v)[0])  # type: ignore[arg-type]
            return "float", out
        if number == 3:  # Int64List (packed or not)
            out = []
            for n, w, v in _fields(value):
                if n == 1 and w == 2:
                    pos = 0
                    while pos < len(v):  # type: ignore[arg-type]
                        x, pos = _varint(v, pos)  # type: ignore[arg-type]
                        out.append(x - (1 << 64) if x >= 1 << 63 else x)
                elif n == 1 and w == 0:
                    out.append(v - (1 << 64) if v >= 1 << 63 else v)  # type: ignore[operator]
            return "int64", out
    return "none", []


def _map_entries(buf: bytes) -> Iterator[tuple[str, bytes]]:
    """A protobuf map field's entries (``key = 1``, ``value = 2``)."""
    for number, wire, entry in _fields(buf):
        if number != 1 or wire != 2:
            continue
        key, val = "", b""
        for n, w, v in _fields(entry):  # type: ignore[arg-type]
            if n == 1 and w == 2:
                key = v.decode("utf-8", "replace")  # type: ignore[union-attr]
            elif n == 2 and w == 2:
                val = v  # type: ignore[assignment]
        yield key, val


@dataclass(frozen=True)
class Clip:
    """One AudioSet clip of released embeddings.

    Attributes:
      video_id: the YouTube id.
      start_time: clip start within the video, seconds.
      labels: AudioSet label indices.
      embeddings: uint8 ``[k, 128]``, one per 0.96 s.
      end_time: clip end within the video, seconds (0 when absent).
    """

    video_id: str
    start_time: float
    labels: tuple[int, ...]
    embeddings: npt.NDArray[np.uint8]
    end_time: float = 0.0


def _context_value(context: dict[str, tuple[str, list]], name: str, kind: str, default: object) -> object:
    """The first value of context feature ``name``, which must be of ``kind`` when present."""
    if name not in context:
        return default
    got, values = context[name]
    if got != kind:
        raise RecordError(f"context {name} is a {got} list, expected {kind}")
    return values[0] if values else default


def parse_clip(record: bytes) -> Clip:
    """Decodes one ``tf.train.SequenceExample`` of the AudioSet release.

    Raises:
      RecordError: malformed protobuf, a context feature of the wrong kind, a
        non-finite time, or no/ill-sized ``audio_embedding`` frames.
    """
    try:
        return _parse_clip(record)
    except RecordError:
        raise
    except (struct.error, ValueError, TypeError, IndexError, OverflowError) as exc:
        # Belt and braces: whatever a hostile record trips over is a bad record.
        raise RecordError(f"malformed record: {exc}") from None


def _parse_clip(record: bytes) -> Clip:
    context: dict[str, tuple[str, list]] = {}
    frames: list[bytes] = []
    for number, wire, value in _fields(record):
        if wire != 2:
            continue
        if number == 1:  # context: Features
            for key, feat in _map_entries(value):  # type: ignore[arg-type]
                context[key] = _feature(feat)
        elif number == 2:  # feature_lists: FeatureLists
            for key, flist in _map_entries(value):  # type: ignore[arg-type]
                if key != AUDIO_EMBEDDING:
                    continue
                for n, w, feat in _fields(flist):
                    if n == 1 and w == 2:
                        kind, values = _feature(feat)  # type: ignore[arg-type]
                        if kind != "bytes" or len(values) != 1:
                            raise RecordError(f"{AUDIO_EMBEDDING} frame is not one bytes value")
                        frames.append(values[0])
    if not frames:
        raise RecordError(f"no {AUDIO_EMBEDDING} frames")
    size = params.EMBEDDING_SIZE
    if any(len(f) != size for f in frames):
        raise RecordError(f"{AUDIO_EMBEDDING} frame is not {size} bytes")
    vid = _context_value(context, VIDEO_ID, "bytes", b"")
    start = float(_context_value(context, START_TIME, "float", 0.0))  # type: ignore[arg-type]
    end = float(_context_value(context, END_TIME, "float", 0.0))  # type: ignore[arg-type]
    if not (math.isfinite(start) and math.isfinite(end)):
        raise RecordError(f"{START_TIME}/{END_TIME} is not a finite number")
    labels = context.get(LABELS, ("int64", []))
    if labels[0] != "int64":
        raise RecordError(f"context {LABELS} is a {labels[0]} list, expected int64")
    return Clip(
        video_id=vid.decode("utf-8", "replace"),  # type: ignore[union-attr]
        start_time=start,
        labels=tuple(int(x) for x in labels[1]),
        embeddings=np.frombuffer(b"".join(frames), dtype=np.uint8).reshape(len(frames), size).copy(),
        end_time=end,
    )


def list_tfrecords(directory: str | os.PathLike) -> list[Path]:
    """The ``*.tfrecord`` files of ``directory``, sorted by name.

    Raises:
      OSError: the directory cannot be listed.
    """
    return sorted(p for p in Path(directory).iterdir() if p.suffix == ".tfrecord" and p.is_file())


def iter_clips(files: list[Path], stats: dict[str, int] | None = None) -> Iterator[Clip]:
    """Yields the clips of ``files`` in order, skipping (and counting) corrupt records.

    Never raises for bad data: corrupt records, damaged regions and unreadable
    files are logged (one line each) and counted in ``corrupt``.

    Args:
      files: tfrecord paths.
      stats: optional counters, updated in place: ``clips``, ``corrupt``.
    """
    counters = stats if stats is not None else {}
    counters.setdefault("clips", 0)
    counters.setdefault("corrupt", 0)
    for path in files:
        try:
            for item in iter_records(path):
                if isinstance(item, RecordError):
                    counters["corrupt"] += 1
                    _LOGGER.warning("skipping corrupt record: %s", item)
                    continue
                try:
                    clip = parse_clip(item)
                except RecordError as exc:
                    counters["corrupt"] += 1
                    _LOGGER.warning("skipping corrupt record in %s: %s", path, exc)
                    continue
                counters["clips"] += 1
                yield clip
        except (OSError, ValueError) as exc:  # unreadable, or a special file mmap refuses
            counters["corrupt"] += 1
            _LOGGER.warning("skipping unreadable tfrecord %s: %s", path, getattr(exc, "strerror", None) or exc)
