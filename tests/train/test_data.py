"""train.data on tfrecords the tests write (clean, corrupt, truncated, short) and on real bal_train."""

from __future__ import annotations

import numpy as np
import pytest
from recordmaker import make_clips, sequence_example, write_tfrecord

from train import data


def test_reads_every_clip_with_its_fields(tmp_path):
    clips = make_clips(30, seed=3)
    write_tfrecord(tmp_path / "a.tfrecord", [sequence_example(c) for c in clips[:17]])
    write_tfrecord(tmp_path / "b.tfrecord", [sequence_example(c) for c in clips[17:]])
    got, stats = data.load_clips(tmp_path, num_labels=10)
    assert len(got) == 30 and stats.clips == 30 and stats.records == 30 and stats.files == 2
    assert stats.corrupt_files == stats.bad_records == stats.bad_size == stats.short == 0
    assert got.x.dtype == np.uint8 and got.x.shape == (30, 10, 128)
    by_key = {(v, s): i for i, (v, s) in enumerate(zip(got.video_id, got.start))}
    for c in clips:
        i = by_key[(c["video_id"], c["start"])]
        np.testing.assert_array_equal(got.x[i], c["emb"])
        assert np.flatnonzero(got.labels[i]).tolist() == sorted(c["labels"])


def test_order_is_deterministic(small_data):
    a, _ = data.load_clips(small_data["data"], num_labels=10)
    b, _ = data.load_clips(small_data["data"], num_labels=10)
    np.testing.assert_array_equal(a.video_id, b.video_id)
    np.testing.assert_array_equal(a.x, b.x)


def test_bad_input_is_counted_and_skipped_never_a_crash(tmp_path):
    good = make_clips(40, seed=5)
    payloads = [sequence_example(c) for c in good]
    write_tfrecord(tmp_path / "good.tfrecord", payloads[:10])
    # Truncated: the last record is cut in half -> the first 9 survive.
    full = write_tfrecord(tmp_path / "trunc.tfrecord", payloads[10:20]).read_bytes()
    (tmp_path / "trunc.tfrecord").write_bytes(full[: len(full) - len(payloads[19]) // 2])
    # A flipped byte inside record 3's payload -> its CRC fails; the file stops there.
    crc = bytearray(write_tfrecord(tmp_path / "crc.tfrecord", payloads[20:30]).read_bytes())
    offset = sum(len(p) + 16 for p in payloads[20:23]) + 12 + 20
    crc[offset] ^= 0xFF
    (tmp_path / "crc.tfrecord").write_bytes(bytes(crc))
    # Well-framed records that are not SequenceExamples, among good ones.
    write_tfrecord(tmp_path / "garbage.tfrecord", [payloads[30], b"\x0a\xff\xff\xff garbage", payloads[31]])
    # Wrong embedding size, and a short clip (7 frames).
    bad_size = dict(good[32], emb=[r.tobytes()[:100] for r in good[32]["emb"]])
    short = make_clips(1, seed=9, frames=7)[0]
    write_tfrecord(tmp_path / "odd.tfrecord", [sequence_example(bad_size), sequence_example(short), payloads[33]])
    (tmp_path / "empty.tfrecord").write_bytes(b"")

    clips, stats = data.load_clips(tmp_path, num_labels=10)
    assert stats.files == 6
    assert stats.corrupt_files == 2
    assert sorted(p.rsplit("/", 1)[-1] for p in stats.corrupt_paths) == ["crc.tfrecord", "trunc.tfrecord"]
    assert stats.bad_records == 1
    assert stats.bad_size == 1
    assert stats.short == 1
    assert len(clips) == stats.clips == 10 + 9 + 3 + 2 + 1
    assert stats.records == 10 + 9 + 3 + 3 + 3

    # The streaming (lossless, in-pipeline) path delivers the same clips.
    from pipeline.labels import ClassMap

    cm = ClassMap(("Speech", "Animal", "Music", "Vehicle"), ("a", "b", "c", "d"), ((0, 1), (2, 3), (4, 5), (6, 7)), 10)
    assert sum(int(x.shape[0]) for x, _ in data.make_dataset(tmp_path, cm, shuffle=0)) == len(clips)

    padded, pstats = data.load_clips(tmp_path, short="pad", num_labels=10)
    assert pstats.padded == 1 and len(padded) == len(clips) + 1
    i = int(np.flatnonzero(padded.frames == 7)[0])
    np.testing.assert_array_equal(padded.x[i][:7], short["emb"])
    np.testing.assert_array_equal(padded.x[i][7:], short["emb"][:3])  # repeated cyclically


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(data.DataError, match="no tfrecord files"):
        data.load_clips(tmp_path / "nowhere")


def test_grouped_split_keeps_videos_together_and_is_stable():
    vids = np.array([f"v{i // 3}" for i in range(3000)])
    tr, va = data.grouped_split(vids, 0.2)
    assert not set(vids[tr]) & set(vids[va])
    assert len(tr) + len(va) == 3000 and 0.15 < len(va) / 3000 < 0.25
    # The side of a video does not depend on the other videos present.
    tr2, va2 = data.grouped_split(vids[::-1][:1500], 0.2)
    assert set(vids[::-1][:1500][va2]) == set(vids[va]) & set(vids[::-1][:1500])


def test_permutation_oversampling_balances_with_permuted_copies():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (100, 10, 128), dtype=np.uint8)
    y = np.zeros((100, 4), np.float32)
    y[:60, 0] = 1
    y[60:80, 1] = 1
    y[80:95, 2] = 1
    y[95:, 3] = 1
    xa, ya, src = data.permutation_oversample(x, y, seed=1)
    np.testing.assert_array_equal(xa[:100], x)
    np.testing.assert_array_equal(ya.sum(axis=0), [60, 60, 60, 60])
    for row in range(100, len(xa)):
        orig = x[src[row]]
        assert sorted(map(bytes, xa[row])) == sorted(map(bytes, orig))  # same seconds...
    moved = np.mean([not np.array_equal(xa[r], x[src[r]]) for r in range(100, len(xa))])
    assert moved > 0.9  # ...in another order


def test_class_weights():
    y = np.array([[1, 0], [1, 0], [1, 1], [0, 0]], np.float32)
    np.testing.assert_allclose(data.class_weights(y), [1.0, 3.0])


def test_streaming_dataset_yields_batches(small_data):
    from pipeline.labels import build_class_map

    cm = build_class_map(small_data["labels_csv"], small_data["ontology"])
    ds = data.make_dataset(small_data["data"], cm, batch_size=64, shuffle=100)
    n = 0
    for x, y in ds:
        assert x.dtype.name == "uint8" and x.shape[1:] == (10, 128) and y.shape[1] == 4
        n += int(x.shape[0])
    assert n == 600


def test_real_bal_train_counts(bal_train_dir):
    clips, stats = data.load_clips(bal_train_dir)
    assert stats.files == 4070 and stats.records == 22160
    assert stats.short == 22160 - 21782 and len(clips) == 21782
    assert stats.corrupt_files == stats.bad_records == stats.bad_size == 0
    assert len(set(clips.video_id)) == len(clips)  # one clip per video in bal_train
    assert clips.labels.sum(axis=1).min() >= 1
