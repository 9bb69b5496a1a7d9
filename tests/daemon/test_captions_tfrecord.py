"""Captions, TFRecord reader: pure units on made and real data."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from pipeline import audioset as tfrecord
from pipeline import captions
from pipeline.events import CaptionEvent


# --- captions ----------------------------------------------------------------------------

def test_payload_keys_and_times():
    ev = CaptionEvent("abc", "end", "Music", "[Music]", 0.93456, 1795474506.9876, 1795474510.0004)
    p = captions.event_payload(ev, "kitchen", "mic:default", "audiocap@1")
    # DESIGN.md's keys in their order, then the keys added since (add, never rename).
    assert list(p) == ["schema", "event_id", "type", "label", "caption", "score", "start", "end", "node",
                       "source", "model", "urgent", "level_dbfs"]
    assert p["urgent"] is False and p["level_dbfs"] is None
    assert p["start"].endswith("Z") and p["start"][-5] == "." and p["start"][10] == "T"
    assert p["end"].endswith(".000Z")
    assert p["score"] == 0.9346
    assert captions.iso_utc(0.0) == "1970-01-01T00:00:00.000Z"


def test_subtitles_format():
    evs = [
        CaptionEvent("a", "start", "Speech", "[Speech]", 0.9, 100.0, None),
        CaptionEvent("a", "end", "Speech", "[Speech]", 0.9, 100.0, 103.5),
        CaptionEvent("b", "end", "Music", "[Music]", 0.8, 101.25, 3700.0),
    ]
    cues = captions.subtitle_cues(evs, origin=100.0)
    assert cues == [(0.0, 3.5, "[Speech]"), (1.25, 3600.0, "[Music]")]
    vtt = captions.format_webvtt(cues)
    assert vtt.startswith("WEBVTT\n\n1\n00:00:00.000 --> 00:00:03.500\n[Speech]\n")
    assert "00:00:01.250 --> 01:00:00.000" in vtt
    srt = captions.format_srt(cues)
    assert srt.startswith("1\n00:00:00,000 --> 00:00:03,500\n[Speech]\n\n2\n00:00:01,250 --> 01:00:00,000")


# --- tfrecord ----------------------------------------------------------------------------

def test_crc32c_known_values():
    # RFC 3720 / iSCSI test vectors
    assert tfrecord.crc32c(b"") == 0
    assert tfrecord.crc32c(bytes(32)) == 0x8A9136AA
    assert tfrecord.crc32c(bytes([0xFF] * 32)) == 0x62A8AB43
    assert tfrecord.crc32c(b"123456789") == 0xE3069283


def test_replay_reader_matches_tensorflow_and_skips_corruption(bal_train_dir, tmp_path):
    tf = pytest.importorskip("tensorflow")
    path = tfrecord.list_tfrecords(bal_train_dir)[7]
    clips = list(tfrecord.iter_clips([path]))
    assert clips
    for clip, raw in zip(clips, tf.data.TFRecordDataset(str(path))):
        ctx, seq = tf.io.parse_single_sequence_example(
            raw,
            context_features={"video_id": tf.io.FixedLenFeature([], tf.string),
                              "labels": tf.io.VarLenFeature(tf.int64),
                              "start_time_seconds": tf.io.FixedLenFeature([], tf.float32)},
            sequence_features={"audio_embedding": tf.io.FixedLenSequenceFeature([], tf.string)},
        )
        ref = np.stack([np.frombuffer(x, np.uint8) for x in seq["audio_embedding"].numpy()])
        assert clip.video_id == ctx["video_id"].numpy().decode()
        assert clip.labels == tuple(ctx["labels"].values.numpy().tolist())
        assert clip.start_time == pytest.approx(float(ctx["start_time_seconds"].numpy()))
        assert np.array_equal(clip.embeddings, ref)
    # Flip one byte inside the second record's data: it is skipped and counted.
    data = bytearray(path.read_bytes())
    (first_len,) = struct.unpack("<Q", data[:8])
    second = 12 + first_len + 4
    data[second + 12 + 40] ^= 0xFF
    bad = tmp_path / "bad.tfrecord"
    bad.write_bytes(bytes(data))
    stats: dict[str, int] = {}
    got = list(tfrecord.iter_clips([bad], stats))
    assert stats == {"clips": len(clips) - 1, "corrupt": 1}
    assert [c.video_id for c in got] == [c.video_id for i, c in enumerate(clips) if i != 1]
