"""Reads AudioSet embedding tfrecords without TensorFlow.

The replay source runs on the edge profile too, where TensorFlow is not
installed, so the TFRecord framing and the few protobuf messages involved
(``tf.train.SequenceExample``) are decoded here with the standard library.

TFRecord framing: ``uint64 length | uint32 masked_crc32c(length) | data |
uint32 masked_crc32c(data)``, little-endian. A record whose checksum or content
is wrong is skipped and counted; reading goes on with the next file when the
framing itself is lost.
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import numpy.typing as npt

from pipeline import params

_LOGGER = logging.getLogger(__name__)


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


class RecordError(ValueError):
    """A record is corrupt (checksum, framing or content)."""


def iter_records(path: str | os.PathLike) -> Iterator[bytes | RecordError]:
    """Yields each record's bytes, or a :class:`RecordError` for a corrupt one.

    A bad data checksum skips that record only; a bad length (framing lost)
    ends the file, after yielding the error.
    """
    with open(path, "rb") as fh:
        index = 0
        while True:
            head = fh.read(12)
            if not head:
                return
            if len(head) < 12:
                yield RecordError(f"{path}: record {index}: truncated header")
                return
            length, length_crc = struct.unpack("<QI", head)
            if masked_crc32c(head[:8]) != length_crc:
                yield RecordError(f"{path}: record {index}: bad length checksum (framing lost)")
                return
            body = fh.read(length + 4)
            if len(body) < length + 4:
                yield RecordError(f"{path}: record {index}: truncated data")
                return
            data, (data_crc,) = body[:length], struct.unpack("<I", body[length:])
            if masked_crc32c(data) != data_crc:
                yield RecordError(f"{path}: record {index}: bad data checksum")
            else:
                yield data
            index += 1


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
        elif wire == 1:
            yield number, wire, buf[pos : pos + 8]
            pos += 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > end:
                raise RecordError("truncated field")
            yield number, wire, buf[pos : pos + n]
            pos += n
        elif wire == 5:
            yield number, wire, buf[pos : pos + 4]
            pos += 4
        else:
            raise RecordError(f"unsupported wire type {wire}")
    if pos != end:
        raise RecordError("truncated message")


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
    """

    video_id: str
    start_time: float
    labels: tuple[int, ...]
    embeddings: npt.NDArray[np.uint8]


def parse_clip(record: bytes) -> Clip:
    """Decodes one ``tf.train.SequenceExample`` of the AudioSet release.

    Raises:
      RecordError: malformed protobuf, or no/ill-sized ``audio_embedding`` frames.
    """
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
                if key != "audio_embedding":
                    continue
                for n, w, feat in _fields(flist):
                    if n == 1 and w == 2:
                        kind, values = _feature(feat)  # type: ignore[arg-type]
                        if kind != "bytes" or len(values) != 1:
                            raise RecordError("audio_embedding frame is not one bytes value")
                        frames.append(values[0])
    if not frames:
        raise RecordError("no audio_embedding frames")
    size = params.EMBEDDING_SIZE
    if any(len(f) != size for f in frames):
        raise RecordError(f"audio_embedding frame is not {size} bytes")
    vid = context.get("video_id", ("bytes", [b""]))[1]
    start = context.get("start_time_seconds", ("float", [0.0]))[1]
    labels = context.get("labels", ("int64", []))[1]
    return Clip(
        video_id=vid[0].decode("utf-8", "replace") if vid and isinstance(vid[0], bytes) else "",
        start_time=float(start[0]) if start else 0.0,
        labels=tuple(int(x) for x in labels),
        embeddings=np.frombuffer(b"".join(frames), dtype=np.uint8).reshape(len(frames), size).copy(),
    )


def list_tfrecords(directory: str | os.PathLike) -> list[Path]:
    """The ``*.tfrecord`` files of ``directory``, sorted by name."""
    return sorted(p for p in Path(directory).iterdir() if p.suffix == ".tfrecord" and p.is_file())


def iter_clips(files: list[Path], stats: dict[str, int] | None = None) -> Iterator[Clip]:
    """Yields the clips of ``files`` in order, skipping (and counting) corrupt records.

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
        except OSError as exc:
            counters["corrupt"] += 1
            _LOGGER.warning("skipping unreadable tfrecord %s: %s", path, exc.strerror or exc)
