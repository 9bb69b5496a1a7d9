"""Malformed AudioSet tfrecords never stop the replay: hand-made hostile records and a seeded fuzz.

The good clips are real ``bal_train`` records; the bad ones are those records
mutated (bit flips, truncations, contents re-framed with valid CRCs) or
SequenceExamples built by hand to be well-framed but malformed.
"""

from __future__ import annotations

import io
import json
import random
import struct
import threading

import numpy as np
import pytest

from pipeline import audioset

SEED = 20261202
TRIALS = 2500


# --- a tiny protobuf writer for hand-made records ---------------------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _ld(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _feature_bytes(*values: bytes) -> bytes:
    return _ld(1, b"".join(_ld(1, v) for v in values))


def _feature_floats_packed(raw: bytes) -> bytes:
    return _ld(2, _ld(1, raw))


def _feature_int64(*values: int) -> bytes:
    return _ld(3, _ld(1, b"".join(_varint(v) for v in values)))


def _entry(key: str, value: bytes) -> bytes:
    return _ld(1, _ld(1, key.encode()) + _ld(2, value))


def _sequence_example(context: dict[str, bytes], frames: list[bytes]) -> bytes:
    ctx = b"".join(_entry(k, v) for k, v in context.items())
    flist = b"".join(_ld(1, _feature_bytes(f)) for f in frames)
    return _ld(1, ctx) + _ld(2, _entry(audioset.AUDIO_EMBEDDING, flist))


def _good_context() -> dict[str, bytes]:
    return {audioset.VIDEO_ID: _feature_bytes(b"made"), audioset.START_TIME: _feature_floats_packed(
        struct.pack("<f", 30.0)), audioset.LABELS: _feature_int64(0, 137)}


FRAMES = [bytes(range(128))] * 10


def _hostile_records() -> dict[str, bytes]:
    """Framed records whose CRCs hold but whose contents or lengths are malformed."""
    five = _good_context() | {audioset.START_TIME: _feature_floats_packed(b"\x00\x00\x20\x41\x00")}
    string_for_number = _good_context() | {audioset.START_TIME: _feature_bytes(b"thirty")}
    string_for_labels = _good_context() | {audioset.LABELS: _feature_bytes(b"137")}
    out = {
        "packed float list of 5 bytes": audioset.frame_record(_sequence_example(five, FRAMES)),
        "string where a number belongs": audioset.frame_record(_sequence_example(string_for_number, FRAMES)),
        "string where labels belong": audioset.frame_record(_sequence_example(string_for_labels, FRAMES)),
        "frame of 127 bytes": audioset.frame_record(_sequence_example(_good_context(), [bytes(127)] * 10)),
        "no frames": audioset.frame_record(_sequence_example(_good_context(), [])),
        "nan start": audioset.frame_record(_sequence_example(
            _good_context() | {audioset.START_TIME: _feature_floats_packed(struct.pack("<f", float("nan")))},
            FRAMES)),
        "field running past its message": audioset.frame_record(b"\x0a\xff\xff\x03abc"),
    }
    for power in (40, 63):
        head = struct.pack("<Q", 1 << power)
        out[f"length header 2^{power}"] = head + struct.pack("<I", audioset.masked_crc32c(head)) + b"x" * 64
    return out


@pytest.fixture(scope="module")
def real_records(bal_train_dir):
    files = audioset.list_tfrecords(bal_train_dir)[:40]
    records = [r for f in files for r in audioset.iter_records(f) if isinstance(r, bytes)]
    assert len(records) > 100
    return records


def _read(path) -> tuple[list[audioset.Clip], dict[str, int]]:
    stats: dict[str, int] = {}
    return list(audioset.iter_clips([path], stats)), stats


def test_made_records_round_trip(tmp_path):
    path = tmp_path / "made.tfrecord"
    path.write_bytes(audioset.frame_record(_sequence_example(_good_context(), FRAMES)))
    (clip,), stats = _read(path)
    assert (clip.video_id, clip.start_time, clip.labels, clip.embeddings.shape) == ("made", 30.0, (0, 137), (10, 128))
    assert stats == {"clips": 1, "corrupt": 0}


@pytest.mark.parametrize("name", list(_hostile_records()))
def test_hostile_record_is_skipped_and_the_next_clip_is_read(name, real_records, tmp_path):
    bad = _hostile_records()[name]
    path = tmp_path / "hostile.tfrecord"
    path.write_bytes(audioset.frame_record(real_records[0]) + bad + audioset.frame_record(real_records[1]))
    clips, stats = _read(path)
    want = [audioset.parse_clip(real_records[0]).video_id, audioset.parse_clip(real_records[1]).video_id]
    assert [c.video_id for c in clips] == want
    assert stats == {"clips": 2, "corrupt": 1}


def _mutate(rng: random.Random, record: bytes) -> tuple[str, bytes, bool]:
    """One mutation of a real record: (kind, bytes for the file, whether it may end the file)."""
    framed = bytearray(audioset.frame_record(record))
    kind = rng.choice(["flip", "flip_header", "truncate", "reframe_flip", "reframe_cut", "reframe_junk",
                       "reframe_length"])
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            framed[rng.randrange(len(framed))] ^= 1 << rng.randrange(8)
        return kind, bytes(framed), False
    if kind == "flip_header":
        framed[rng.randrange(12)] ^= 1 << rng.randrange(8)
        return kind, bytes(framed), False
    if kind == "truncate":
        return kind, bytes(framed[: rng.randrange(1, len(framed))]), True
    data = bytearray(record)
    if kind == "reframe_flip":
        for _ in range(rng.randint(1, 16)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == "reframe_cut":
        a = rng.randrange(len(data))
        data = data[:a] + data[a + rng.randint(1, 64):]
    elif kind == "reframe_junk":
        a = rng.randrange(len(data))
        data = data[:a] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 32))) + data[a:]
    else:  # a varint length inside the message replaced by a huge one
        a = rng.randrange(len(data) - 3)
        data = data[:a] + b"\xff\xff\xff\xff\xff\xff\xff\xff\x7f" + data[a + 1:]
    return kind, audioset.frame_record(bytes(data)), False


def test_fuzz_never_raises_and_keeps_the_good_clips_around(real_records, tmp_path):
    rng = random.Random(SEED)
    kinds: dict[str, int] = {}
    corrupt = 0
    for trial in range(TRIALS):
        before, target, after = rng.sample(range(len(real_records)), 3)
        kind, bad, at_end = _mutate(rng, real_records[target])
        kinds[kind] = kinds.get(kind, 0) + 1
        tail = b"" if at_end else audioset.frame_record(real_records[after])
        path = tmp_path / f"fuzz{trial % 8}.tfrecord"
        path.write_bytes(audioset.frame_record(real_records[before]) + bad + tail)
        clips, stats = _read(path)  # must not raise, whatever the bytes
        corrupt += stats["corrupt"]
        first = audioset.parse_clip(real_records[before])
        assert clips[0].video_id == first.video_id and np.array_equal(clips[0].embeddings, first.embeddings), kind
        if not at_end:
            last = audioset.parse_clip(real_records[after])
            assert clips[-1].video_id == last.video_id and np.array_equal(clips[-1].embeddings, last.embeddings), kind
        # The mutated record either still forms a valid clip or is counted as corrupt, once.
        extra = len(clips) - (1 if at_end else 2)
        assert extra in (0, 1) and extra + min(stats["corrupt"], 1) == 1 and stats["corrupt"] <= 1, (kind, stats)
    assert len(kinds) == 7 and corrupt >= TRIALS // 2, (kinds, corrupt)


def test_replay_service_goes_on_past_bad_files_and_captions_as_before(real_records, classifier_dir, tmp_path):
    """The daemon's own service on a replay holding hostile records, truncated and garbage files."""
    from daemon.chain import CaptionChain
    from daemon.config import Config, DaemonConfig
    from daemon.service import Service
    from daemon.sinks import SinkContext, StdoutSink
    from daemon.sources import ReplaySource
    from pipeline.classifier import load_classifier
    from pipeline.events import EventTracker

    good = tmp_path / "good"
    mixed = tmp_path / "mixed"
    good.mkdir()
    mixed.mkdir()
    hostile = list(_hostile_records().values())
    for i in range(12):
        recs = real_records[5 * i: 5 * i + 5]
        (good / f"{i:02d}.tfrecord").write_bytes(b"".join(audioset.frame_record(r) for r in recs))
        body = b"".join(audioset.frame_record(r) + hostile[(i + j) % len(hostile)] for j, r in enumerate(recs))
        (mixed / f"{i:02d}.tfrecord").write_bytes(body)
        (mixed / f"{i:02d}x.tfrecord").write_bytes(body[: len(body) // 3])  # truncated copy
    (mixed / "zz.tfrecord").write_bytes(b"\x00" * 5000)  # no record at all
    truncated_clips = sum(len(_read(p)[0]) for p in sorted(mixed.glob("*x.tfrecord")))

    clf = load_classifier(classifier_dir, runtime="litert")

    def run(directory) -> list[dict]:
        tracker = EventTracker(clf.classes, clf.thresholds, min_duration=0.9, hold=0.9,
                               new_id=iter(f"id{i}" for i in range(10**6)).__next__)
        source = ReplaySource(str(directory), speed=None, start_time=1.8e9)
        source.open()
        ctx = SinkContext("fuzz", "replay", "m@1", clf.classes, tracker.caption_texts())
        out = io.StringIO()
        config = Config(daemon=DaemonConfig(exit_at_end=True))
        service = Service(config, source, CaptionChain(clf, tracker), [StdoutSink(ctx, out)], handle_signals=False)
        result: list[int] = []
        worker = threading.Thread(target=lambda: result.append(service.run()))
        worker.start()
        worker.join(120)
        service.request_stop()
        worker.join(10)
        assert result == [0]
        return [json.loads(line) for line in out.getvalue().splitlines()], source.stats()

    want, _ = run(good)
    # Without the truncated copies the mixed folder holds exactly the good clips.
    for p in mixed.glob("*x.tfrecord"):
        p.rename(p.with_suffix(".skip"))
    got, stats = run(mixed)
    assert want and got == want
    assert stats["clips"] == 60 and stats["corrupt"] == 60 + 1
    for p in mixed.glob("*.skip"):
        p.rename(p.with_suffix(".tfrecord"))
    _, stats = run(mixed)
    assert stats["clips"] == 60 + truncated_clips and stats["corrupt"] > 61
