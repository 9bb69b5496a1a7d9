"""Benchmark of the daemon: chain time per second of audio, publish latency, memory.

    python bench/daemon.py                 # 10 minutes of 44.1 kHz audio, fast, to a private mosquitto
    python bench/daemon.py --seconds 120   # shorter
    python bench/daemon.py --runtime litert --vggish vggish.tflite

It runs the daemon's own code in-process (``build_models``, ``CaptionChain``,
``Service``, ``FileSource``, ``MqttSink``) on a generated 44.1 kHz stereo
recording (espeak-ng speech, tones, noise, chirps, silence) at the fastest
pace, with a private ``mosquitto`` on a free loopback port, and prints:

* the whole chain's processing time per second of audio (resample, log-mel,
  VGGish, PCA, window, classifier, events, sinks), p50/p95/p99;
* latency from the end of the audio block that produced a caption event to
  the broker's PUBACK, p50/p95 (the block is processed as soon as it is read,
  as a live block is as soon as it is captured);
* resident memory: after warm-up, peak, at the end, and the growth in between.

Without ``--vggish`` the VGGish weights are seeded random numbers written as a
TF1 checkpoint by the test helpers (the real weights cannot be downloaded on
the development machines): the arithmetic, and so the timing, is that of the
real network, the captions are not. Thresholds are set to each class's median
score of a first pass so that captions change often enough to measure latency.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# As the daemon's entry point does (daemon/__main__.py): single-threaded BLAS.
for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402  (after the BLAS thread setting)
from procstat import status_mib  # noqa: E402  (bench/, beside this file)

RATE = 44100


def _make_audio(seconds: float, out: Path, workdir: Path) -> Path:
    """A stereo 44.1 kHz int16 WAV cycling through speech, tones, noise, chirps and silence."""
    import soundfile as sf

    import helpers

    speech_path = helpers.espeak_wav(
        "The quick brown fox jumps over the lazy dog. Captions for everyone, live, from this microphone.",
        workdir / "speech.wav", rate=RATE,
    )
    speech, _ = sf.read(speech_path, dtype="float32")
    pieces = [speech, helpers.sine(440, 4, RATE), helpers.noise(3, RATE, seed=1), helpers.chirp(4, RATE),
              np.zeros(2 * RATE, np.float32), helpers.sine(1000, 3, RATE, amplitude=0.2)]
    cycle = np.concatenate(pieces)
    n = int(seconds * RATE)
    reps = int(np.ceil(n / cycle.shape[0]))
    mono = np.tile(cycle, reps)[:n]
    with sf.SoundFile(out, "w", RATE, 2, subtype="PCM_16") as fh:
        step = 60 * RATE
        for i in range(0, n, step):
            m = mono[i : i + step]
            fh.write(np.stack([m, 0.7 * m], axis=1))
    return out


def _start_broker(workdir: Path) -> tuple[subprocess.Popen, int]:
    import socket

    if shutil.which("mosquitto") is None:
        sys.exit("bench/daemon.py: mosquitto is not installed (scripts/setup installs it), or pass --mqtt-port")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nuser root\n")
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("bench/daemon.py: mosquitto did not start")


def _median_thresholds(models, wav: Path, seconds: float) -> dict[str, float]:
    """Each class's median window score over the first ``seconds`` of the recording."""
    from daemon.chain import CaptionChain, WindowScores
    from daemon.sources import FileSource
    from pipeline.events import EventTracker

    chain = CaptionChain(models.classifier, EventTracker(models.classes, {c: 1.0 for c in models.classes}),
                         models.make_embedder)
    src = FileSource(str(wav), realtime=False)
    src.open()
    scores = []
    stop = threading.Event()
    for block in src.blocks(stop):
        scores += [o.scores for o in chain.feed(block) if isinstance(o, WindowScores)]
        if len(scores) * 0.96 >= seconds:
            break
    s = np.stack(scores)
    return {c: float(np.median(s[:, i])) for i, c in enumerate(models.classes)}


def _run(models, wav: Path, port: int, thresholds: dict[str, float], realtime: bool, workdir: Path) -> dict:
    """One run of the daemon's Service over ``wav``; returns what was measured."""
    from daemon.chain import CaptionChain
    from daemon.config import load_config
    from daemon.mqtt import MqttSink
    from daemon.service import Service
    from daemon.sinks import SinkContext, StdoutSink
    from daemon.sources import FileSource
    from pipeline.events import EventTracker

    conf = workdir / "audiocap.toml"
    conf.write_text(f"[daemon]\nnode = \"bench\"\nexit_at_end = true\n"
                    f"[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nscores = true\n")
    config = load_config(conf)
    tracker = EventTracker(models.classes, thresholds, {c: 0.95 * v for c, v in thresholds.items()},
                           min_duration=0.9, hold=0.9)
    source = FileSource(str(wav), realtime=realtime)
    source.open()
    ctx = SinkContext("bench", source.name, models.model_id, models.classes, tracker.caption_texts())
    mqtt_sink = MqttSink(config.mqtt, ctx)
    service = Service(config, source, CaptionChain(models.classifier, tracker, models.make_embedder),
                      [mqtt_sink, StdoutSink(ctx, io.StringIO())], handle_signals=False)
    rss: list[tuple[float, float]] = []  # (audio seconds processed, RSS MiB)
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            rss.append((service.counts["audio_s"], status_mib("VmRSS")))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    load_before = os.getloadavg()[0]
    t0, cpu0 = time.monotonic(), time.process_time()
    code = service.run()
    wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    done.set()
    sampler.join()
    rss.append((service.counts["audio_s"], status_mib("VmRSS")))
    return {
        "code": code, "wall": wall, "cpu": cpu, "audio_s": service.counts["audio_s"],
        "events": service.counts["events"], "proc": list(service.timer.samples), "rss": rss,
        "lat": [1000 * x for x in mqtt_sink.latencies()], "blat": [1000 * x for x in mqtt_sink.broker_latencies()],
        "dropped": mqtt_sink.counters["dropped"], "load": (load_before, os.getloadavg()[0]),
    }


def _pcts(values: list[float], qs: tuple[int, ...]) -> dict[str, float | None]:
    from daemon.service import percentile

    return {f"p{q}": (round(percentile(values, q), 1) if values else None) for q in qs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=600.0, help="audio for the fast run (default 600 = 10 minutes)")
    ap.add_argument("--latency-seconds", type=float, default=60.0, help="audio for the real-time latency run")
    ap.add_argument("--runtime", choices=("tensorflow", "litert"), default="tensorflow")
    ap.add_argument("--vggish", help="VGGish source (default: a random-weight checkpoint written here)")
    ap.add_argument("--pca", default=str(REPO.parent / "shared" / "vggish" / "vggish_pca_params.npz"))
    ap.add_argument("--classifier", default="", help="bundle directory (default: the shipped one)")
    ap.add_argument("--mqtt-port", type=int, default=0, help="use this broker on 127.0.0.1 instead of starting one")
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds of audio before memory is baselined")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from daemon.config import ModelConfig
    from daemon.models import build_models

    workdir = Path(tempfile.mkdtemp(prefix="audiocap-bench-"))
    broker = None
    try:
        vggish_note = args.vggish
        if not args.vggish:
            import helpers

            ckpt = helpers.write_checkpoint(helpers.random_vggish_weights(seed=0), workdir / "vggish_model.ckpt")
            args.vggish = str(ckpt)
            vggish_note = "random weights (seed 0) written as a TF1 checkpoint by tests/helpers.py"
        print(f"generating {args.seconds:.0f} s of 44.1 kHz stereo audio ...", flush=True)
        wav = _make_audio(args.seconds, workdir / "bench.wav", workdir)
        short = _make_audio(args.latency_seconds, workdir / "latency.wav", workdir)
        models = build_models(ModelConfig(vggish=args.vggish, pca=args.pca, classifier=args.classifier,
                                          runtime=args.runtime))
        thresholds = _median_thresholds(models, wav, 60.0)
        if args.mqtt_port:
            port = args.mqtt_port
        else:
            broker, port = _start_broker(workdir)
        print(f"fast run: {args.seconds:.0f} s of audio through the daemon's service ({args.runtime}) ...", flush=True)
        fast = _run(models, wav, port, thresholds, realtime=False, workdir=workdir)
        print(f"real-time run: {args.latency_seconds:.0f} s of audio, blocks as a microphone delivers them ...",
              flush=True)
        live = _run(models, short, port, thresholds, realtime=True, workdir=workdir)
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)

    rss = fast["rss"]
    after = [m for a, m in rss if a >= args.warmup]
    base = after[0] if after else float("nan")
    tail = [m for a, m in rss if a >= args.seconds * 0.9]
    figures = {
        "runtime": args.runtime,
        "vggish": vggish_note,
        "classifier": models.model_id,
        "fast_run": {"audio_s": round(fast["audio_s"], 1), "wall_s": round(fast["wall"], 1),
                     "loadavg_1min_before_after": [round(x, 2) for x in fast["load"]]},
        "chain_ms_per_audio_s": _pcts(fast["proc"], (50, 95, 99)),
        "chain_samples": len(fast["proc"]),
        "cpu_ms_per_audio_s_mean": round(1000 * fast["cpu"] / max(fast["audio_s"], 1e-9), 1),
        "live_chain_ms_per_audio_s": _pcts(live["proc"], (50, 95, 99)),
        "publish_latency_ms": _pcts(live["lat"], (50, 95)),
        "publish_to_puback_ms": _pcts(live["blat"], (50, 95)),
        "latency_samples": len(live["lat"]),
        "live_loadavg_1min_before_after": [round(x, 2) for x in live["load"]],
        "fast_publish_latency_ms": _pcts(fast["lat"], (50, 95)),
        "mqtt_dropped": fast["dropped"] + live["dropped"],
        "rss_mib": {
            "after_warmup": round(base, 1),
            "peak": round(max(m for _, m in rss), 1),
            "end": round(rss[-1][1], 1),
            "growth_after_warmup": round((float(np.mean(tail)) if tail else rss[-1][1]) - base, 1),
        },
        "exit_codes": [fast["code"], live["code"]],
    }
    c, lc = figures["chain_ms_per_audio_s"], figures["live_chain_ms_per_audio_s"]
    p, b, r = figures["publish_latency_ms"], figures["publish_to_puback_ms"], figures["rss_mib"]
    print()
    print(f"audiocapd benchmark ({args.runtime} runtime, {os.cpu_count()} CPUs, 44.1 kHz stereo input)")
    print(f"  VGGish: {vggish_note}")
    print(f"  machine load (1-min average) during the fast run: {fast['load'][0]:.2f} -> {fast['load'][1]:.2f}, "
          f"real-time run: {live['load'][0]:.2f} -> {live['load'][1]:.2f} (other sessions' work inflates wall times)")
    print(f"  chain time per second of audio, fast run ({fast['audio_s']:.0f} s in {fast['wall']:.0f} s): "
          f"p50 {c['p50']} ms, p95 {c['p95']} ms, p99 {c['p99']} ms ({len(fast['proc'])} one-second samples)")
    print(f"  chain time per second of audio, real-time run: p50 {lc['p50']} ms, p95 {lc['p95']} ms, p99 {lc['p99']} ms")
    print(f"  CPU time of the whole process per second of audio, fast run (mean): {figures['cpu_ms_per_audio_s_mean']} ms")
    print(f"  end of audio block -> PUBACK of its caption event, real-time run: p50 {p['p50']} ms, p95 {p['p95']} ms "
          f"({len(live['lat'])} events); of which publish -> PUBACK: p50 {b['p50']} ms, p95 {b['p95']} ms")
    print(f"  RSS over the fast run: {r['after_warmup']} MiB after {args.warmup:.0f} s of audio, peak {r['peak']} MiB, "
          f"end {r['end']} MiB; last 10% vs after warm-up {r['growth_after_warmup']:+.1f} MiB")
    print(f"  MQTT messages dropped: {figures['mqtt_dropped']}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
