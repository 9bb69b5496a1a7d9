"""Captioning recordings: the CLI on a WAV file, subtitles, streaming invariance, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

import dhelpers
from daemon.chain import CaptionChain, WindowScores
from daemon.models import Models
from daemon.sources import FileSource
from pipeline.events import CaptionEvent, EventTracker
from pipeline.postprocess import Postprocessor

START = 1_790_000_000.0


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """21 s at 44.1 kHz stereo: espeak speech, then tone/noise/chirp."""
    d = tmp_path_factory.mktemp("rec")
    speech = dhelpers.speech_wav(d / "speech.wav", rate=44100)
    x, rate = sf.read(speech, dtype="float32")
    x = x[: 10 * rate] if x.shape[0] > 10 * rate else np.pad(x, (0, 10 * rate - x.shape[0]))
    mix = np.concatenate([x, dhelpers.tone_mix(11.0, rate)])
    stereo = np.stack([mix, 0.5 * mix], axis=1)
    path = d / "recording.wav"
    sf.write(path, stereo, rate, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def models(vggish_model, pca_path, classifier):
    return Models(classifier=classifier, model_id=f"{classifier.name}@{classifier.version}", vggish=vggish_model,
                  postprocessor=Postprocessor(pca_path))


def _tracker(models, thresholds):
    return EventTracker(models.classes, thresholds, min_duration=0.9, hold=0.9,
                        new_id=iter(f"id{i}" for i in range(10**6)).__next__)


def _caption(models, path, block_frames, thresholds):
    import threading

    chain = CaptionChain(models.classifier, _tracker(models, thresholds), models.make_embedder)
    src = FileSource(str(path), realtime=False, block_frames=block_frames, start_time=START)
    src.open()
    out = []
    for block in src.blocks(threading.Event()):
        out += chain.feed(block)
    out += chain.end_stream()
    return out


def _strip(events):
    return [(e.event_id, e.type, e.label, e.score, e.start, e.end) for e in events if isinstance(e, CaptionEvent)]


def test_captions_do_not_depend_on_block_size(models, recording):
    whole = sf.info(recording).frames
    ref = [o for o in _caption(models, recording, whole, models.classifier.thresholds) if isinstance(o, WindowScores)]
    scores = np.stack([o.scores for o in ref])
    assert scores.shape[0] == 21  # one window per 0.96 s embedding, the first ones partial
    assert ref[0].t_start == START  # the audio clock of a file starts at its first sample
    # Thresholds at each class's median score make events happen whatever the (random-weight)
    # VGGish hears; the reference events are those of the whole-file scores.
    med = {c: float(np.median(scores[:, i])) for i, c in enumerate(models.classes)}
    tracker = _tracker(models, med)
    ref_events = []
    for o in ref:
        ref_events += tracker.update(o.t_start, o.t_end, o.scores, o.origin)
    ref_events += tracker.finish(START + sf.info(recording).duration)
    assert len(ref_events) >= 2
    for block in (441, 1000, 4096):
        got = _caption(models, recording, block, med)
        got_scores = np.stack([o.scores for o in got if isinstance(o, WindowScores)])
        np.testing.assert_array_equal(got_scores, scores)
        assert [o.t_start for o in got if isinstance(o, WindowScores)] == [o.t_start for o in ref]
        assert _strip(got) == _strip(ref_events), f"block size {block}"


def test_cli_file_to_stdout_and_subtitles(recording, vggish_ckpt, pca_path, classifier_dir, tmp_path):
    vtt, srt = tmp_path / "out.vtt", tmp_path / "out.srt"
    conf = tmp_path / "audiocap.toml"
    # Low thresholds so the random-weight VGGish still produces captions to write.
    conf.write_text("[events]\nmin_duration_s = 0.9\nhold_s = 0.9\n"
                    "thresholds = { Speech = 0.01, Animal = 0.01, Music = 0.01, Vehicle = 0.01 }\n")
    r = dhelpers.run_daemon(
        "--config", str(conf), "--source", f"file:{recording}", "--sink", "stdout", "--sink", f"vtt:{vtt}",
        "--sink", f"srt:{srt}", "--pace", "fast", "--exit-at-end", "--vggish", str(vggish_ckpt),
        "--pca", str(pca_path), "--classifier", str(classifier_dir), timeout=180,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert events, r.stderr[-2000:]
    assert {e["type"] for e in events} == {"start", "end"}
    assert all(e["source"] == f"file:{recording}" and e["schema"] == 1 for e in events)
    n_end = sum(e["type"] == "end" for e in events)
    text = vtt.read_text()
    assert text.startswith("WEBVTT") and text.count(" --> ") == n_end
    assert srt.read_text().count(" --> ") == n_end
    assert "[" in text


@pytest.mark.parametrize(
    "args, code, fragment",
    [
        (["--source", "file:/nonexistent/x.wav"], 66, "audio file not found: /nonexistent/x.wav"),
        (["--source", "file:{notwav}"], 66, "cannot read audio file"),
        (["--source", "replay:/nonexistent"], 66, "replay folder not found"),
        (["--source", "file:{wav}", "--pca", "/nonexistent/pca.npz"], 78, "PCA parameters not found at /nonexistent"),
        (["--source", "file:{wav}", "--pca", "{pca}", "--vggish", "/nonexistent/vggish_model.ckpt"], 78,
         "VGGish weights not found at /nonexistent/vggish_model.ckpt"),
        (["--source", "file:{wav}", "--pca", "{pca}", "--classifier", "/nonexistent/bundle"], 78,
         "--classifier: [model] classifier: '/nonexistent/bundle' is neither a bundle directory"),
        (["--source", "file:{wav}", "--pca", "{pca}", "--runtime", "litert", "--vggish", "/x/vggish.ckpt"], 78,
         "needs VGGish as a .tflite file"),
        (["--source", "mic:no-such-microphone"], 69, "audio input device 'no-such-microphone' not found"),
        (["--source", "file:{wav}", "--sink", "vtt:/nonexistent/dir/out.vtt"], 73, "cannot write subtitles"),
        (["--source", "file:{wav}", "--mqtt-port", "99999"], 78, "--mqtt-port: [mqtt] port: 99999 is out of range"),
        (["--source", "file:{odd}"], 65, "cannot stream-resample 44101 Hz"),
        (["--source", "replay:{unreadable}"], 66, "is not a folder"),
        (["--source", "file:{wav}", "--mqtt-host", ""], 78, "[mqtt] host is empty"),
    ],
)
def test_bad_input_one_line_and_exit_code(args, code, fragment, tmp_path, pca_path):
    wav = tmp_path / "ok.wav"
    sf.write(wav, np.zeros(16000, np.float32), 16000)
    notwav = tmp_path / "notes.wav"
    notwav.write_text("this is not audio\n")
    odd = tmp_path / "odd.wav"
    sf.write(odd, np.zeros(44101, np.float32), 44101)
    unreadable = tmp_path / "not-a-folder.tfrecord"  # a path that is a file where a folder belongs
    unreadable.write_bytes(b"")
    args = [a.format(wav=wav, notwav=notwav, pca=pca_path, odd=odd, unreadable=unreadable) for a in args]
    r = dhelpers.run_daemon(*args, "--sink", "stdout", "--exit-at-end", timeout=60)
    lines = dhelpers.error_lines(r.stderr)
    assert r.returncode == code, r.stderr[-2000:]
    assert len(lines) == 1 and fragment in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr


def test_unreachable_tfhub_fails_at_once(tmp_path, pca_path):
    wav = tmp_path / "ok.wav"
    sf.write(wav, np.zeros(16000, np.float32), 16000)
    r = dhelpers.run_daemon("--source", f"file:{wav}", "--sink", "stdout", "--pca", str(pca_path),
                            "--vggish", "https://tfhub.invalid/google/vggish/1", timeout=90)
    lines = dhelpers.error_lines(r.stderr)
    assert r.returncode == 69, r.stderr[-2000:]
    assert len(lines) == 1 and "tfhub.invalid is unreachable" in lines[0]


# --- damaged files: captioned as far as they can be, each damage logged once ------------------

def _read_all(path, caplog):
    import threading

    from daemon.sources import StreamBreak

    src = FileSource(str(path), block_frames=1600, start_time=START)
    src.open()
    blocks = list(src.blocks(threading.Event()))
    audio = [b for b in blocks if not isinstance(b, StreamBreak)]
    return src, audio, [b for b in blocks if isinstance(b, StreamBreak)]


def _tone_file(path, fmt_kw):
    x = (0.5 * np.sin(np.arange(16000 * 6) * 2 * np.pi * 440 / 16000)).astype(np.float32)
    sf.write(path, x, 16000, **fmt_kw)
    return x


def _damage_flac(path):
    """A 6 s tone as FLAC with 2000 bytes scrambled a third of the way in (the decoder loses sync)."""
    _tone_file(path, {"format": "FLAC"})
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 2000):
        data[i] = (data[i] * 7 + 13) & 0xFF
    path.write_bytes(bytes(data))


def _cut_in_half(path, fmt_kw):
    """A 6 s tone whose file is cut after half its bytes (header intact)."""
    _tone_file(path, fmt_kw)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_truncated_wav_warns_once_with_what_was_read(tmp_path, caplog):
    path = _cut_in_half(tmp_path / "cut.wav", {"subtype": "PCM_16"})
    src, audio, breaks = _read_all(path, caplog)
    frames = sum(b.samples.shape[0] for b in audio)
    assert 2.9 * 16000 < frames < 3.1 * 16000 and not breaks
    warnings = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warnings) == 1 and str(path) in warnings[0] and "6.0 s" in warnings[0]
    assert src.stats()["truncated"] == 1


def test_flac_losing_sync_mid_file_goes_on_after_the_damage(tmp_path, caplog):
    path = tmp_path / "damaged.flac"
    _damage_flac(path)
    src, audio, breaks = _read_all(path, caplog)
    assert src.stats()["damaged"] >= 1 and len(breaks) >= 1
    # Audio after the damaged region is still delivered, on a new stream, at its own time.
    after = [b for b in audio if b.stream > 0]
    assert after and after[-1].t0 + after[-1].samples.shape[0] / 16000 == pytest.approx(START + 6.0, abs=0.01)
    assert any(str(path) in r.getMessage() and "cannot decode" in r.getMessage() for r in caplog.records)


def test_truncated_flac_ends_early_with_one_warning(tmp_path, caplog):
    path = _cut_in_half(tmp_path / "cut.flac", {"format": "FLAC"})
    src, audio, breaks = _read_all(path, caplog)
    ends = [r.getMessage() for r in caplog.records if "ends early" in r.getMessage()]
    assert len(ends) == 1 and str(path) in ends[0] and "of 96000 frames" in ends[0]
    assert sum(b.samples.shape[0] for b in audio) > 16000


def test_nan_and_inf_samples_become_silence_with_a_warning(tmp_path, caplog):
    path = tmp_path / "nan.wav"
    x = _tone_file(path, {"subtype": "FLOAT"})
    x[1000:1100] = np.nan
    x[20000] = np.inf
    sf.write(path, x, 16000, subtype="FLOAT")
    src, audio, _ = _read_all(path, caplog)
    samples = np.concatenate([b.samples for b in audio])
    assert np.isfinite(samples).all() and samples[1000:1100].max() == 0.0
    assert sum("NaN/Inf" in r.getMessage() for r in caplog.records) == 1 and src.stats()["nonfinite"] >= 2


def test_damaged_flac_through_the_daemon_exits_0_with_captions(tmp_path, vggish_ckpt, pca_path, classifier_dir):
    path = tmp_path / "damaged.flac"
    _damage_flac(path)
    r = dhelpers.run_daemon("--source", f"file:{path}", "--sink", "stdout", "--pace", "fast", "--exit-at-end",
                            "--vggish", str(vggish_ckpt), "--pca", str(pca_path), "--classifier",
                            str(classifier_dir), timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "cannot decode" in r.stderr
