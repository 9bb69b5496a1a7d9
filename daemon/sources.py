"""Audio sources: microphone, audio file, AudioSet replay.

Every source yields timestamped blocks until it ends or ``stop`` is set:
:class:`AudioBlock` (PCM at the source's rate) for ``mic`` and ``file``,
:class:`EmbeddingBlock` (uint8 embeddings, entering after the PCA stage) for
``replay``. Times are UTC epoch seconds from the audio clock. A block's
``stream`` number changes when the audio is discontinuous (the microphone was
re-opened): the worker then ends open events and restarts its window.

Sources are built by :func:`make_source`, so tests and benchmarks can hand the
service another one.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol, Union

import numpy as np
import numpy.typing as npt

from daemon.config import Config, MicConfig, SourceSpec, parse_source, resample_problem
from daemon.exitcodes import EX_DATAERR, EX_NOINPUT, EX_UNAVAILABLE, ExitError
from pipeline import params

_LOGGER = logging.getLogger(__name__)

FILE_SKIP_SECONDS = 1.0
"""Audio skipped past a region of a file the decoder cannot read (then it tries again)."""

class SourceError(ExitError):
    """A source cannot start; ``exit_code`` is the sysexits code to leave with."""

    def __init__(self, message: str, exit_code: int = EX_UNAVAILABLE) -> None:
        super().__init__(message, exit_code)


@dataclass(frozen=True)
class AudioBlock:
    """PCM audio.

    Attributes:
      samples: ``[n, channels]`` float32 (or int16) at ``sample_rate``.
      sample_rate: Hz.
      t0: UTC epoch seconds of the first sample (audio clock).
      available: wall-clock time the block was handed over (its end, for a mic).
      stream: changes when the audio is discontinuous.
    """

    samples: npt.NDArray
    sample_rate: int
    t0: float
    available: float
    stream: int


@dataclass(frozen=True)
class EmbeddingBlock:
    """Embeddings in the AudioSet release format.

    Attributes:
      embeddings: uint8 ``[k, 128]``, one per 0.96 s.
      t0: UTC epoch seconds at which the first embedding starts.
      available: wall-clock time the block was handed over.
      stream: changes when the sequence is discontinuous.
    """

    embeddings: npt.NDArray[np.uint8]
    t0: float
    available: float
    stream: int


@dataclass(frozen=True)
class StreamBreak:
    """The audio stopped (device failed or vanished): end what is open now.

    Attributes:
      available: wall-clock time the break was noticed.
    """

    available: float


Block = Union[AudioBlock, EmbeddingBlock, StreamBreak]


class Source(Protocol):
    """What the service needs from a source."""

    name: str
    """As it appears in payloads, e.g. ``mic:default``."""
    kind: str
    """``audio`` or ``embeddings``."""
    finite: bool
    """Whether it ends by itself (file, replay)."""

    def open(self) -> None:
        """Checks that the source can start; raises :class:`SourceError` if not."""

    def blocks(self, stop: threading.Event) -> Iterator[Block]:
        """Yields blocks until the source ends or ``stop`` is set."""

    def stats(self) -> dict[str, Any]:
        """Counters for the metrics message."""


def _sleep_until(deadline: float, stop: threading.Event) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        stop.wait(delay)


# --- file -------------------------------------------------------------------------

@dataclass
class FileSource:
    """A WAV/FLAC/OGG file (anything libsndfile reads).

    Damaged files are captioned as far as they can be: a region the decoder
    cannot read (a FLAC that lost sync) is skipped (:data:`FILE_SKIP_SECONDS`
    at a time, open captions ended by a :class:`StreamBreak`), a truncated
    file is read up to where it ends, NaN/Inf samples are zeroed; each is
    logged once with the file and how much was read, and counted.

    Args:
      path: the audio file.
      realtime: sleep so that audio is delivered at the pace it plays.
      block_frames: frames per block (default 0.1 s).
      start_time: UTC epoch seconds of the first sample (default: when opened).
    """

    path: str
    realtime: bool = False
    block_frames: int = 0
    start_time: float | None = None
    kind: str = field(default="audio", init=False)
    finite: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        self.name = f"file:{self.path}"
        self.sample_rate = 0
        self.channels = 0
        self.frames = 0
        self.claimed_frames = 0
        self._blocks = 0
        self.counters = {"truncated": 0, "damaged": 0, "nonfinite": 0}

    def open(self) -> None:
        """Reads the header.

        Raises:
          SourceError: (EX_NOINPUT) naming the path and why it cannot be read;
            (EX_DATAERR) a sample rate that cannot be resampled to 16 kHz.
        """
        import soundfile as sf

        p = Path(self.path)
        if not p.is_file():
            raise SourceError(f"audio file not found: {self.path}", EX_NOINPUT)
        try:
            info = sf.info(str(p))
        except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError
            reason = str(exc).split("\n")[0]
            raise SourceError(
                f"cannot read audio file {self.path}: {reason} (expected WAV, FLAC or OGG)", EX_NOINPUT
            ) from None
        if info.samplerate <= 0 or info.channels <= 0:
            raise SourceError(f"audio file {self.path} has no audio (rate {info.samplerate}, "
                              f"{info.channels} channels)", EX_NOINPUT)
        problem = resample_problem(int(info.samplerate))
        if problem:
            raise SourceError(f"audio file {self.path}: {problem}", EX_DATAERR)
        self.sample_rate, self.channels, self.frames = int(info.samplerate), int(info.channels), int(info.frames)
        self.claimed_frames = _claimed_frames(info.extra_info or "", self.frames)
        if self.block_frames <= 0:
            self.block_frames = max(1, int(round(params.FILE_BLOCK_SECONDS * self.sample_rate)))

    def blocks(self, stop: threading.Event) -> Iterator[AudioBlock | StreamBreak]:
        """Yields the file in blocks; at real-time pace, one block per block duration."""
        import soundfile as sf

        if not self.sample_rate:
            self.open()
        if self.claimed_frames > self.frames:
            self.counters["truncated"] += 1
            _LOGGER.warning("%s is truncated: its header promises %.1f s, the file holds %.1f s (%d frames); "
                            "captioning what is there", self.path, self.claimed_frames / self.sample_rate,
                            self.frames / self.sample_rate, self.frames)
        t_start = self.start_time if self.start_time is not None else time.time()
        m0 = time.monotonic()
        done = 0
        stream = 0
        skip = max(self.block_frames, int(FILE_SKIP_SECONDS * self.sample_rate))
        fh = sf.SoundFile(self.path)
        try:
            while not stop.is_set():
                try:
                    data = fh.read(self.block_frames, dtype="float32", always_2d=True)
                except Exception as exc:  # noqa: BLE001 - libsndfile's errors have no common type
                    fh.close()
                    fh, done = self._skip_damage(done, skip, exc)
                    yield StreamBreak(time.time())  # open captions end where the audio did
                    if fh is None:
                        return
                    stream += 1
                    continue
                if data.shape[0] == 0:
                    return
                if not np.isfinite(data).all():
                    self.counters["nonfinite"] += 1
                    if self.counters["nonfinite"] == 1:
                        _LOGGER.warning("%s holds NaN/Inf samples (first at %.2f s); they are replaced by silence",
                                        self.path, done / self.sample_rate)
                    data = np.where(np.isfinite(data), data, np.float32(0.0))
                t0 = t_start + done / self.sample_rate
                done += data.shape[0]
                if self.realtime:
                    _sleep_until(m0 + done / self.sample_rate, stop)
                self._blocks += 1
                yield AudioBlock(data, self.sample_rate, t0, time.time(), stream)
        finally:
            if fh is not None:
                fh.close()

    def _skip_damage(self, done: int, skip: int, exc: BaseException) -> tuple[Any, int]:
        """Re-opens the file past a region the decoder cannot read.

        libsndfile's handle is unusable after a decoder error (a FLAC that lost
        sync will not even seek), so the file is opened again and sought
        :data:`FILE_SKIP_SECONDS` further each time until it decodes.

        Returns:
          ``(handle, position)``, or ``(None, done)`` when nothing past the
          damage can be read (the file ends there).
        """
        import soundfile as sf

        self.counters["damaged"] += 1
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        for target in range(done + skip, self.frames, skip):
            fh = None
            try:
                fh = sf.SoundFile(self.path)
                fh.seek(target)
            except Exception:  # noqa: BLE001 - not decodable there either: further on
                if fh is not None:
                    fh.close()
                continue
            level = logging.WARNING if self.counters["damaged"] == 1 else logging.DEBUG
            _LOGGER.log(level, "%s: cannot decode at %.1f s (%s); skipped to %.1f s (%d damaged region(s) so far)",
                        self.path, done / self.sample_rate, reason, target / self.sample_rate,
                        self.counters["damaged"])
            return fh, target
        self.counters["truncated"] += 1
        _LOGGER.warning("%s ends early: cannot decode past %.1f s of %.1f s (%s); read %d of %d frames",
                        self.path, done / self.sample_rate, self.frames / self.sample_rate, reason, done, self.frames)
        return None, done

    def stats(self) -> dict[str, Any]:
        """Blocks read, and the damage met."""
        return {"blocks": self._blocks, **self.counters}


def _claimed_frames(extra_info: str, frames: int) -> int:
    """Frames a WAV header promises (libsndfile reports ``data : N (should be M)`` bytes for a
    truncated file); ``frames`` when it says nothing."""
    import re

    data = re.search(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", extra_info, re.M)
    align = re.search(r"Block Align\s*:\s*(\d+)", extra_info)
    if not data or not align or int(align.group(1)) <= 0:
        return frames
    return max(frames, int(data.group(1)) // int(align.group(1)))


# --- replay -------------------------------------------------------------------------

@dataclass
class ReplaySource:
    """AudioSet embedding tfrecords replayed as a continuous stream of embeddings.

    Clips follow each other in file order (a "radio" of 10-second clips); the
    window therefore mixes neighbouring clips at the joins, as live audio would.

    Args:
      directory: a folder of ``*.tfrecord`` files (e.g. AudioSet ``bal_train``).
      speed: ``1.0`` delivers one embedding every 0.96 s; ``None`` is as fast as
        possible; other values scale the pace (tests use this).
      start_time: UTC epoch seconds of the first embedding (default: when started).
      limit_clips: stop after this many clips (0 = all).
    """

    directory: str
    speed: float | None = 1.0
    start_time: float | None = None
    limit_clips: int = 0
    kind: str = field(default="embeddings", init=False)
    finite: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        self.name = f"replay:{self.directory}"
        self._files: list[Path] = []
        self.counters: dict[str, int] = {"clips": 0, "corrupt": 0}

    def open(self) -> None:
        """Lists the tfrecords.

        Raises:
          SourceError: (EX_NOINPUT) when the folder is missing or holds none.
        """
        from pipeline.audioset import list_tfrecords

        d = Path(self.directory)
        if d.exists() and not d.is_dir():
            raise SourceError(f"replay source {self.directory} is not a folder (expected a folder of *.tfrecord)",
                              EX_NOINPUT)
        if not d.is_dir():
            raise SourceError(f"replay folder not found: {self.directory}", EX_NOINPUT)
        try:
            self._files = list_tfrecords(d)
        except OSError as exc:
            raise SourceError(f"cannot read the replay folder {self.directory}: {exc.strerror or exc}",
                              EX_NOINPUT) from None
        if not self._files:
            raise SourceError(f"no *.tfrecord files in {self.directory}", EX_NOINPUT)

    def blocks(self, stop: threading.Event) -> Iterator[EmbeddingBlock]:
        """Yields one block per clip (fast) or per embedding (paced)."""
        from pipeline.audioset import iter_clips

        if not self._files:
            self.open()
        t_start = self.start_time if self.start_time is not None else time.time()
        m0 = time.monotonic()
        done = 0
        step = params.EMBEDDING_SECONDS
        for n, clip in enumerate(iter_clips(self._files, self.counters)):
            if stop.is_set() or (self.limit_clips and n >= self.limit_clips):
                return
            _LOGGER.debug("replaying %s at %.0f s, labels %s", clip.video_id, clip.start_time, clip.labels)
            if self.speed is None:
                yield EmbeddingBlock(clip.embeddings, t_start + done * step, time.time(), 0)
                done += clip.embeddings.shape[0]
                continue
            for row in clip.embeddings:
                # An embedding is complete 0.96 s after it starts.
                _sleep_until(m0 + (done + 1) * step / self.speed, stop)
                if stop.is_set():
                    return
                yield EmbeddingBlock(row[None], t_start + done * step, time.time(), 0)
                done += 1

    def stats(self) -> dict[str, Any]:
        """Clips replayed and corrupt records skipped."""
        return dict(self.counters)


# --- microphone -----------------------------------------------------------------------

def _sounddevice() -> Any:
    try:
        import sounddevice as sd
    except OSError as exc:  # PortAudio shared library missing
        raise SourceError(f"cannot load PortAudio ({exc}); install libportaudio2") from None
    return sd


def input_devices() -> list[dict[str, Any]]:
    """The input devices PortAudio sees: index, name, channels, default rate, host API."""
    sd = _sounddevice()
    apis = sd.query_hostapis()
    out = []
    for dev in sd.query_devices():
        if dev["max_input_channels"] > 0:
            out.append({
                "index": dev["index"],
                "name": dev["name"],
                "channels": dev["max_input_channels"],
                "rate": dev["default_samplerate"],
                "hostapi": apis[dev["hostapi"]]["name"],
            })
    return out


def format_devices(devices: list[dict[str, Any]]) -> str:
    """``--list-devices`` output, one device per line."""
    if not devices:
        return "no audio input devices found" + NO_SOUND_CARD_HINT
    return "\n".join(
        f"{d['index']:3d}  {d['name']}  ({d['channels']} ch, {d['rate']:.0f} Hz, {d['hostapi']})" for d in devices
    )


NO_SOUND_CARD_HINT = ("; no sound card? docs/daemon.md's \"A virtual microphone (no sound card)\" makes one "
                      "with PulseAudio, or caption a recording: --source file:PATH (or replay:DIR of AudioSet "
                      "tfrecords)")
"""Appended when no input device exists at all: the way out for a box without a sound card."""


def resolve_device(spec: str) -> int | None:
    """Finds an input device by index or by (case-insensitive) name substring.

    Args:
      spec: empty for the system default, a number, or part of a name.

    Returns:
      The device index, or ``None`` for the default device.

    Raises:
      SourceError: (EX_UNAVAILABLE) naming the device and the ones available.
    """
    sd = _sounddevice()
    devices = input_devices()
    if not spec:
        try:
            default = sd.query_devices(kind="input")
        except Exception:
            listed = "; ".join(f"{d['index']} {d['name']!r}" for d in devices)
            raise SourceError(
                f"no default audio input device; available: {listed or 'none'}"
                + ("" if listed else NO_SOUND_CARD_HINT)
            ) from None
        return int(default["index"]) if "index" in default else None
    if spec.isdigit():
        for d in devices:
            if d["index"] == int(spec):
                return d["index"]
    else:
        exact = [d for d in devices if d["name"] == spec]
        partial = [d for d in devices if spec.lower() in d["name"].lower()]
        match = exact or partial
        if match:
            return match[0]["index"]
    available = "; ".join(f"{d['index']} {d['name']!r}" for d in devices)
    raise SourceError(
        f"audio input device {spec!r} not found (input devices: {available or 'none'}; see audiocapd "
        f"--list-devices){'' if available else NO_SOUND_CARD_HINT}"
    )


class MicSource:
    """A live input device through PortAudio (sounddevice).

    The PortAudio callback only copies the block, stamps it with the audio clock
    and puts it in a bounded queue (counting overflows and drops). The worker
    reads the queue. When the device vanishes or the stream stops delivering,
    the source closes it, logs once, re-initialises PortAudio (to see re-plugged
    devices) and retries with exponential back-off; it never ends by itself.

    Args:
      config: the ``[mic]`` table.
      device: name substring or index ("" = default).
    """

    kind = "audio"
    finite = False

    def __init__(self, config: MicConfig, device: str = "") -> None:
        self.config = config
        self.device = device
        self.name = f"mic:{device or 'default'}"
        self.sample_rate = 0
        self.channels = 0
        self._q: queue.Queue = queue.Queue(maxsize=1)
        self._overflows = 0  # written by the callback only
        self._dropped = 0  # written by the callback only
        self._stream_no = 0
        self._failures = 0
        self.state = "stopped"

    def open(self) -> None:
        """Checks that the device exists (start-up: a wrong name is an error).

        Raises:
          SourceError: (EX_UNAVAILABLE) unknown device, or PortAudio missing.
        """
        index = resolve_device(self.device)
        self._describe(index)

    def _describe(self, index: int | None) -> tuple[int, int]:
        sd = _sounddevice()
        info = sd.query_devices(index, kind="input") if index is None else sd.query_devices(index)
        rate = self.config.sample_rate or int(round(info["default_samplerate"]))
        channels = self.config.channels or min(int(info["max_input_channels"]), 2)
        problem = resample_problem(rate)
        if problem:
            raise SourceError(f"audio input {self.name}: {problem}; set [mic] sample_rate to a common rate")
        return rate, max(1, channels)

    def _callback(self, indata: npt.NDArray, frames: int, t: Any, status: Any) -> None:
        now = time.time()
        if status.input_overflow:
            self._overflows += 1
        adc, cur = t.inputBufferAdcTime, t.currentTime
        lag = cur - adc
        span = frames / self.sample_rate
        if adc > 0 and cur > 0 and span <= lag < span + 1.0:
            t0 = now - lag  # the ADC time of the first sample, on the wall clock
        else:  # host API without a plausible ADC clock (e.g. ALSA's pulse plugin): the block just ended
            t0 = now - span
        try:
            self._q.put_nowait((indata.copy(), t0, now))
        except queue.Full:
            self._dropped += 1

    def _start(self) -> Any:
        sd = _sounddevice()
        index = resolve_device(self.device)
        rate, channels = self._describe(index)
        self.sample_rate, self.channels = rate, channels
        blocksize = max(1, int(round(self.config.block_s * rate)))
        self._q = queue.Queue(maxsize=max(2, math.ceil(self.config.queue_s / self.config.block_s)))
        stream = sd.InputStream(
            device=index, samplerate=rate, channels=channels, dtype="float32",
            blocksize=blocksize, callback=self._callback,
        )
        stream.start()
        return stream

    def _reinitialise(self) -> None:
        sd = _sounddevice()
        try:  # lets PortAudio rescan devices (a re-plugged USB microphone)
            sd._terminate()
            sd._initialize()
        except Exception as exc:  # pragma: no cover - depends on the host
            _LOGGER.debug("PortAudio re-initialisation failed: %s", exc)

    def blocks(self, stop: threading.Event) -> Iterator[AudioBlock | StreamBreak]:
        """Yields captured blocks forever (until ``stop``), re-opening on failure; a
        :class:`StreamBreak` marks each failure."""
        backoff = self.config.retry_min_s
        stall_s = max(params.MIC_STALL_SECONDS, 20 * self.config.block_s)
        first_s = max(params.MIC_FIRST_BLOCK_SECONDS, stall_s)
        while not stop.is_set():
            try:
                stream = self._start()
            except Exception as exc:
                self._failures += 1
                self.state = "retrying"
                level = logging.WARNING if self._failures == 1 else logging.DEBUG
                _LOGGER.log(level, "cannot open audio input %s: %s; retrying with back-off (up to %.0f s)",
                            self.name, str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                            self.config.retry_max_s)
                stop.wait(backoff)
                backoff = min(backoff * 2, self.config.retry_max_s)
                self._reinitialise()
                continue
            self._stream_no += 1
            self.state = "capturing"
            if self._failures:
                _LOGGER.warning("audio input %s is back after %d failed attempt(s)", self.name, self._failures)
            self._failures = 0
            backoff = self.config.retry_min_s
            _LOGGER.info("capturing from %s at %d Hz, %d channel(s)", self.name, self.sample_rate, self.channels)
            last = time.monotonic()
            limit = first_s
            broken = False
            # Warm-up: drop blocks until the audio clock has run steadily (stamps
            # following the sample count) for MIC_WARMUP_SECONDS, at most 5x that.
            steady, expected = 0, None
            need = int(params.MIC_WARMUP_SECONDS * self.sample_rate)
            warm_until = time.monotonic() + 5 * params.MIC_WARMUP_SECONDS
            try:
                while not stop.is_set():
                    try:
                        data, t0, avail = self._q.get(timeout=0.2)
                    except queue.Empty:
                        if not stream.active or time.monotonic() - last > limit:
                            raise RuntimeError(
                                "the stream stopped" if not stream.active
                                else f"no audio for {time.monotonic() - last:.1f} s"
                            ) from None
                        continue
                    last, limit = time.monotonic(), stall_s
                    if steady < need:
                        ok = expected is not None and abs(t0 - expected) <= params.TIME_REANCHOR_SECONDS
                        steady = steady + data.shape[0] if ok else 0
                        expected = t0 + data.shape[0] / self.sample_rate
                        if steady < need and time.monotonic() < warm_until:
                            continue
                        steady = need
                    yield AudioBlock(data, self.sample_rate, t0, avail, self._stream_no)
            except Exception as exc:  # PortAudioError, a vanished device, a stall
                self._failures += 1
                self.state = "retrying"
                _LOGGER.warning("audio input %s failed: %s; re-opening with back-off", self.name, exc)
                broken = True
            finally:
                try:
                    stream.abort(ignore_errors=True)
                    stream.close(ignore_errors=True)
                except Exception:  # the device may already be gone
                    pass
            if broken:
                yield StreamBreak(time.time())  # captions open now end where the audio did
            if not stop.is_set() and self._failures:
                stop.wait(backoff)
                backoff = min(backoff * 2, self.config.retry_max_s)
                self._reinitialise()
        self.state = "stopped"

    def stats(self) -> dict[str, Any]:
        """Overflows (PortAudio and full queue), queue depth, state."""
        return {
            "overflows": self._overflows,
            "dropped_blocks": self._dropped,
            "queue_depth": self._q.qsize(),
            "state": self.state,
            "device_failures": self._failures,
        }


def make_source(config: Config, realtime: bool | None = None) -> Source:
    """Builds the source named by ``[daemon] source``.

    Args:
      config: the daemon configuration.
      realtime: override of the pace (default: ``[daemon] pace``).
    """
    spec: SourceSpec = parse_source(config.daemon.source)
    rt = (config.daemon.pace == "realtime") if realtime is None else realtime
    if spec.kind == "mic":
        return MicSource(config.mic, spec.arg or config.mic.device)
    if spec.kind == "file":
        return FileSource(spec.arg, realtime=rt)
    return ReplaySource(spec.arg, speed=1.0 if rt else None)
