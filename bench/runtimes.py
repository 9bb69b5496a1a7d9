"""TensorFlow vs LiteRT float32 vs LiteRT int8, side by side, in one run.

    python bench/runtimes.py [--seconds 60] [--workdir DIR]

Each configuration runs in its own child process (so its peak RSS is its
own), through the daemon's own factory and chain (``daemon.models.build_models``,
``daemon.chain.CaptionChain``): what is measured is what ``audiocapd`` runs.
Per configuration it prints the time the whole chain takes per second of
44.1 kHz audio (resample, log-mel, VGGish, PCA, window, classifier, events;
p50/p95 over 1 s blocks), with one and two threads; the process peak RSS;
start-up time (process start to models loaded, and to the first window's
scores); the cost of per-second captions on the edge profile (LiteRT int8,
one thread, with the bundle's per-second model vs the 10-s window score that
captioned before); and agreement with the TensorFlow path on a set of recordings
(espeak-ng speech, tones, noise) and replayed AudioSet embeddings: uint8
embedding disagreement and caption events.

The VGGish weights are seeded random numbers in the published architecture
(the real ones cannot be downloaded here): timings are those of the real
network; caption agreement is between runtimes on the same weights.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The checkout first: bench/daemon.py would otherwise shadow the daemon package.
sys.path.insert(0, str(REPO))
RATE = 44100
WINDOW_RUN = "litert int8, 1 thread, before"


def _child(args: argparse.Namespace) -> None:
    """Runs one configuration; prints one JSON line."""
    spawned = args.spawned
    import numpy as np

    from daemon.chain import CaptionChain, WindowScores
    from daemon.config import EventsConfig, ModelConfig
    from daemon.models import build_models, build_tracker
    from daemon.sources import AudioBlock, EmbeddingBlock
    from pipeline.events import CaptionEvent

    cfg = ModelConfig(vggish=args.vggish, pca=args.pca, classifier="", runtime=args.runtime, num_threads=args.threads)
    models = build_models(cfg)
    ready_s = time.time() - spawned
    events = EventsConfig(scoring=args.scoring)

    def chain() -> CaptionChain:
        return CaptionChain(models.classifier, build_tracker(models, events), models.make_embedder)

    data = np.load(args.audio)
    # Timing: args.seconds of audio in 1 s blocks, audio-clock stamps 1 s apart.
    # Each block is synthesised when fed (a sweep plus noise), so no long
    # recording sits in memory and the peak RSS is the chain's own.
    c = chain()
    times, first_scores_s = [], None
    rng = np.random.default_rng(3)
    for k in range(args.seconds):
        t = (k * RATE + np.arange(RATE)) / RATE
        sweep = 0.3 * np.sin(2 * np.pi * (100 + 590 * (t % 10)) * t)
        x = (sweep + 0.05 * rng.standard_normal(RATE)).astype(np.float32)
        blk = AudioBlock(x[:, None], RATE, 1e9 + k, time.time(), 0)
        t0 = time.perf_counter()
        out = c.feed(blk)
        times.append((time.perf_counter() - t0) * 1000)
        if first_scores_s is None and any(isinstance(o, WindowScores) for o in out):
            first_scores_s = time.time() - spawned
    times.sort()
    # Agreement: each recording as its own stream, and replayed embeddings.
    results = {}
    for name in data["names"]:
        c = chain()
        rec = data[f"rec_{name}"]
        outs = []
        for i in range(0, rec.shape[0], 4410):
            outs += c.feed(AudioBlock(rec[i : i + 4410, None], RATE, 1e9 + i / RATE, 0.0, 1))
        outs += c.end_stream()
        emb = models.make_embedder(RATE).embed(rec)
        results[str(name)] = {
            "embeddings": emb.tolist(),
            "scores": [o.scores.tolist() for o in outs if isinstance(o, WindowScores)],
            "events": [[o.type, o.label, round(o.start, 3), None if o.end is None else round(o.end, 3)]
                       for o in outs if isinstance(o, CaptionEvent)],
        }
    c = chain()
    outs = []
    replay = data["replay"]
    for k in range(replay.shape[0]):
        outs += c.feed(EmbeddingBlock(replay[k : k + 1], 1e9 + 0.96 * k, 0.0, 2))
    outs += c.end_stream()
    results["replayed AudioSet"] = {
        "embeddings": [],
        "scores": [o.scores.tolist() for o in outs if isinstance(o, WindowScores)],
        "events": [[o.type, o.label, round(o.start, 3), None if o.end is None else round(o.end, 3)]
                   for o in outs if isinstance(o, CaptionEvent)],
    }
    print(json.dumps({
        "p50": statistics.median(times), "p95": times[min(len(times) - 1, int(0.95 * len(times)))],
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "ready_s": ready_s, "first_scores_s": first_scores_s,
        "tensorflow_loaded": "tensorflow" in sys.modules, "results": results,
        "scoring": chain().tracker.scoring,
    }))


def _prepare(workdir: Path) -> tuple[Path, dict[str, Path], Path]:
    sys.path.insert(0, str(REPO / "tests"))
    import numpy as np
    import soundfile

    import helpers

    workdir.mkdir(parents=True, exist_ok=True)
    ckpt = workdir / "random_vggish.ckpt"
    if not ckpt.exists():
        helpers.write_checkpoint(helpers.random_vggish_weights(0), ckpt)
    tfl = {q: workdir / f"vggish_{q}.tflite" for q in ("float32", "int8")}
    for q, path in tfl.items():
        if not path.exists():
            subprocess.run([sys.executable, "-c", "import sys; from pipeline import vggish as v; "
                            "v.export_tflite(v.load_vggish(sys.argv[1]), sys.argv[2], sys.argv[3])",
                            str(ckpt), str(path), q], check=True, cwd=REPO)
    speech = helpers.espeak_wav("Hello, is anybody there? The train to Leeds leaves at nine. "
                                "Please mind the gap between the train and the platform.",
                                workdir / "speech.wav", rate=RATE)
    recs = {
        "speech": soundfile.read(speech, dtype="float32")[0],
        "tones": helpers.sine(440, 12.0, RATE, 0.3) + helpers.sine(1320, 12.0, RATE, 0.2),
        "noise": helpers.noise(12.0, RATE, seed=11),
        "chirp": helpers.chirp(12.0, RATE),
    }
    from pipeline.audioset import iter_clips, list_tfrecords

    clips = []
    if helpers.BAL_TRAIN.is_dir():
        for clip in iter_clips(list_tfrecords(helpers.BAL_TRAIN)[:40]):
            clips.append(clip.embeddings)
    replay = np.concatenate(clips) if clips else np.zeros((0, 128), np.uint8)
    audio = workdir / "runtimes_audio.npz"
    np.savez(audio, names=np.array(list(recs)), replay=replay,
             **{f"rec_{k}": v.astype(np.float32) for k, v in recs.items()})
    return ckpt, tfl, audio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60, help="audio timed per configuration")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "audiocap-bench")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--runtime", help=argparse.SUPPRESS)
    parser.add_argument("--vggish", help=argparse.SUPPRESS)
    parser.add_argument("--pca", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--scoring", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--audio", help=argparse.SUPPRESS)
    parser.add_argument("--spawned", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    import numpy as np

    sys.path.insert(0, str(REPO / "tests"))
    import helpers

    ckpt, tfl, audio = _prepare(args.workdir)
    configs = []
    for threads in (1, 2):
        configs.append((f"tensorflow (Keras), {threads} thread", "tensorflow", str(ckpt), threads, "auto"))
        configs.append((f"litert float32, {threads} thread", "litert", str(tfl["float32"]), threads, "auto"))
        configs.append((f"litert int8, {threads} thread", "litert", str(tfl["int8"]), threads, "auto"))
    # The edge profile once more with the window score, as captions were made before.
    configs.append((WINDOW_RUN, "litert", str(tfl["int8"]), 1, "window"))
    runs = {}
    for label, runtime, vggish, threads, scoring in configs:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", OPENBLAS_NUM_THREADS="1",
                   TF_NUM_INTRAOP_THREADS=str(threads), TF_NUM_INTEROP_THREADS="1")
        cmd = [sys.executable, __file__, "--child", "--seconds", str(args.seconds), "--runtime", runtime, "--vggish", vggish,
               "--pca", str(helpers.PCA_PATH), "--threads", str(threads), "--audio", str(audio), "--scoring", scoring,
               "--spawned", repr(time.time())]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
        if proc.returncode != 0:
            sys.exit(f"{label} failed:\n{proc.stderr[-3000:]}")
        runs[label] = json.loads(proc.stdout.strip().splitlines()[-1])

    print(f"audiocap runtimes: whole chain per second of {RATE} Hz audio ({args.seconds} s timed, 1 s blocks); "
          f"VGGish with random weights of the published architecture; load average {os.getloadavg()[0]:.2f}")
    head = f"{'configuration':<34} {'scoring':>8} {'p50 ms':>7} {'p95 ms':>7} {'peak RSS MiB':>12} {'ready s':>8} {'1st scores s':>12} {'TF loaded':>9}"
    print(head)
    for label, r in runs.items():
        print(f"{label:<34} {r['scoring']:>8} {r['p50']:>7.2f} {r['p95']:>7.2f} {r['rss_mib']:>12.0f} {r['ready_s']:>8.2f} "
              f"{(r['first_scores_s'] or float('nan')):>12.2f} {str(r['tensorflow_loaded']):>9}")
    now, before = runs["litert int8, 1 thread"], runs[WINDOW_RUN]
    print(f"\nper-second captions on the edge profile: p50 {now['p50']:.2f} ms vs {before['p50']:.2f} ms with the "
          f"window score ({now['p50'] - before['p50']:+.2f} ms, ratio {now['p50'] / before['p50']:.3f}); "
          f"p95 {now['p95']:.2f} vs {before['p95']:.2f} ms ({now['p95'] - before['p95']:+.2f} ms)")
    ref = runs["tensorflow (Keras), 1 thread"]["results"]
    print("\nagreement with the TensorFlow path (1 thread):")
    for label in ("litert float32, 1 thread", "litert int8, 1 thread"):
        res = runs[label]["results"]
        for name, want in ref.items():
            got = res[name]
            line = f"  {label:<26} {name:<18} events {len(got['events']):>3} vs {len(want['events']):>3}: " \
                   f"{'identical' if got['events'] == want['events'] else 'DIFFERENT'}"
            if want["scores"]:
                d = np.abs(np.array(got["scores"]) - np.array(want["scores"]))
                line += f"; scores max|d| {d.max():.2e}"
            if want["embeddings"]:
                steps = np.abs(np.array(got["embeddings"], int) - np.array(want["embeddings"], int))
                line += f"; uint8 moved {np.mean(steps > 0):.2%} (max {steps.max()} steps)"
            print(line)


if __name__ == "__main__":
    main()
