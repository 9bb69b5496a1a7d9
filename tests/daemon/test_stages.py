"""Window, event tracker, captions, TFRecord reader: pure units on made and real data."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from daemon import tfrecord
from pipeline import captions, params
from pipeline.events import CaptionEvent, EventTracker
from pipeline.window import RollingWindow, fill_window

STEP = params.EMBEDDING_SECONDS
CLASSES = ("Speech", "Animal", "Music", "Vehicle")


def _emb(k: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (k, 128), dtype=np.uint8)


# --- window ------------------------------------------------------------------------------

def test_fill_window_tiles_partial_and_keeps_last_ten():
    e = _emb(13)
    assert np.array_equal(fill_window(e[:1]), np.repeat(e[:1], 10, axis=0))
    w3 = fill_window(e[:3])
    assert np.array_equal(w3, e[[0, 1, 2, 0, 1, 2, 0, 1, 2, 0]])
    assert np.array_equal(fill_window(e), e[3:])
    with pytest.raises(ValueError, match="zero embeddings"):
        fill_window(e[:0])
    with pytest.raises(ValueError, match="uint8"):
        fill_window(e.astype(np.float32))


def test_rolling_window_one_window_per_embedding_whatever_the_grouping():
    e = _emb(25, seed=1)
    ref_w = RollingWindow()
    idx_all, win_all = ref_w.process(e)
    assert list(idx_all) == list(range(25))
    for groups in ([1] * 25, [3, 7, 15], [10, 10, 5]):
        w = RollingWindow()
        got_i, got_w = [], []
        start = 0
        for g in groups:
            i, ws = w.process(e[start : start + g])
            got_i += list(i)
            got_w.append(ws)
            start += g
        assert got_i == list(idx_all)
        assert np.array_equal(np.concatenate(got_w), win_all)
    assert np.array_equal(win_all[-1], e[-10:])
    assert np.array_equal(win_all[0], np.repeat(e[:1], 10, axis=0))


def test_rolling_window_min_embeddings_and_reset():
    w = RollingWindow(min_embeddings=10)
    i, ws = w.process(_emb(9))
    assert ws.shape == (0, 10, 128)
    i, ws = w.process(_emb(2, seed=5))
    assert list(i) == [9, 10]
    w.reset()
    assert w.embeddings_seen == 0


# --- events ------------------------------------------------------------------------------

def _run(tracker: EventTracker, seq: list[float], cls: int = 2, t0: float = 1000.0) -> list[CaptionEvent]:
    out = []
    for i, s in enumerate(seq):
        scores = np.zeros(4)
        scores[cls] = s
        out += tracker.update(t0 + i * STEP, t0 + (i + 1) * STEP, scores)
    return out


def _tracker(**kw) -> EventTracker:
    counter = iter(range(1000))
    return EventTracker(CLASSES, {c: 0.5 for c in CLASSES}, new_id=lambda: f"id{next(counter)}", **kw)


def test_event_needs_min_duration_and_ends_after_hold():
    tr = _tracker()
    # one window above: too short (min 1 s > 0.96 s), dropped silently
    assert _run(tr, [0.9, 0.1, 0.1]) == []
    tr = _tracker()
    ev = _run(tr, [0.1, 0.9, 0.6, 0.45, 0.3, 0.3, 0.3, 0.1])
    assert [(e.type, e.label) for e in ev] == [("start", "Music"), ("end", "Music")]
    start, end = ev
    assert start.start == pytest.approx(1000 + 1 * STEP)  # where the score first crossed "on"
    assert start.event_id == end.event_id
    # 0.45 is above off (0.4): still on; below off from window 4; hold 2 s -> 3 windows
    assert end.end == pytest.approx(1000 + 4 * STEP)
    assert end.score == pytest.approx(0.9)
    assert tr.active["Music"] is False


def test_hold_is_cancelled_by_a_return_above_off():
    tr = _tracker()
    ev = _run(tr, [0.9, 0.9, 0.1, 0.9, 0.1, 0.1, 0.1, 0.1])
    assert [e.type for e in ev] == ["start", "end"]
    assert ev[1].end == pytest.approx(1000 + 4 * STEP)


def test_finish_ends_open_events_and_thresholds_validate():
    tr = _tracker(off_thresholds={"Music": 0.2}, captions={"Music": "[Musik]"})
    ev = _run(tr, [0.9, 0.9, 0.3])
    assert [e.type for e in ev] == ["start"] and ev[0].caption == "[Musik]"
    assert tr.active["Music"]
    fin = tr.finish(2000.0)
    assert [(e.type, e.end) for e in fin] == [("end", 2000.0)]
    assert tr.finish(2001.0) == []
    with pytest.raises(ValueError, match="off <= on"):
        EventTracker(CLASSES, {c: 0.5 for c in CLASSES}, off_thresholds={"Speech": 0.7})
    with pytest.raises(ValueError, match="no on threshold"):
        EventTracker(CLASSES, {"Speech": 0.5})


# --- captions ----------------------------------------------------------------------------

def test_payload_keys_and_times():
    ev = CaptionEvent("abc", "end", "Music", "[Music]", 0.93456, 1795474506.9876, 1795474510.0004)
    p = captions.event_payload(ev, "kitchen", "mic:default", "audiocap@1")
    assert list(p) == ["schema", "event_id", "type", "label", "caption", "score", "start", "end", "node",
                       "source", "model"]
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
