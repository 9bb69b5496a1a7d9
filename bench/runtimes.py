"""TensorFlow vs LiteRT float32 vs LiteRT int8 (dynamic range and full integer),
side by side, in one run, against today's path.

    python bench/runtimes.py [--seconds 120] [--rounds 3] [--baseline REF] [--workdir DIR]

Each configuration runs in a fresh child process that builds only that
configuration, through the daemon's own factory and chain
(``daemon.models.build_models``, ``daemon.chain.CaptionChain``): what is
measured is what ``audiocapd`` runs. Per configuration it prints:

* the whole chain's time (resample, log-mel, VGGish, PCA, classifier, events)
  per second of 44.1 kHz audio, p50/p95. The audio is fed in blocks of one
  embedding hop (0.96 s), so every block holds exactly one VGGish run, as
  every block of the daemon does (its blocks are 0.1 s); the time is divided
  by 0.96. For comparison also the p95 over 1 s blocks, which hold two VGGish
  runs in 1 s out of 24. The first ``WARMUP_BLOCKS`` blocks of each stream
  (one-off costs of the interpreters' first runs) are shown apart as
  "warm-up max" and left out of p50/p95;
* on a shared machine the load changes from minute to minute, so the
  configurations run in ``--rounds`` interleaved rounds (each a fresh child).
  Each figure is given as the median over the rounds and as the best round
  (load only ever adds time, so the best round is the estimate nearest to a
  quiet machine);
* the peak RSS of the child itself (``VmHWM`` of ``/proc/self/status``, which
  is per address space: nothing of the parent that started it is counted);
* start-up: process start to models loaded, and to the first scores;
* fidelity against LiteRT float32 (the same network in float): the share of
  uint8 embedding values moved (and the largest move) and whether the caption
  events are identical, on recordings no quantisation was calibrated on
  (espeak-ng speech, tones, noise, a chirp, and a real 10 s recording when one
  is installed), plus the caption events on replayed AudioSet embeddings.

``--baseline REF`` adds today's path: the same configuration as the edge
default (LiteRT int8, one thread) run from the code of git revision REF (its
files, unpacked in the work directory) with the same files and bundle, and prints
each edge figure as a ratio to it.

The VGGish weights are seeded random numbers in the published architecture
(the real ones cannot be downloaded here): timings are those of the real
network; quantisation error depends on the weights, so the fidelity figures
are this network's, not the released model's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RATE = 44100
HOP = round(0.96 * RATE)  # samples per embedding hop at 44.1 kHz
EDGE = "litert int8, 1 thread"
WINDOW_RUN = "litert int8, 1 thread, window score"
REAL_RECORDINGS = ("dcase_util/utils/example_data/acoustic_scene.wav",)
"""Real recordings some installed packages carry; used for fidelity when present."""
GOAL_P95_MS, GOAL_RSS_MIB = 10.0, 250.0
WARMUP_BLOCKS = 3
"""The first blocks of a stream pay one-off costs (the interpreters' first
runs, the per-second model's interpreter made on first use): they are shown
apart ("warm-up max"), and p50/p95 are over the blocks after them."""


def _child(args: argparse.Namespace) -> None:
    """Runs one configuration; prints one JSON line."""
    # The checkout (or the baseline's) first: bench/daemon.py would otherwise shadow the daemon package.
    sys.path.insert(0, args.code or str(REPO))
    import numpy as np

    from daemon.chain import CaptionChain, WindowScores
    from daemon.config import EventsConfig, ModelConfig
    from daemon.models import build_models, build_tracker
    from daemon.sources import AudioBlock, EmbeddingBlock
    from pipeline.events import CaptionEvent

    cfg = ModelConfig(vggish=args.vggish, pca=args.pca, classifier=args.classifier, runtime=args.runtime,
                      num_threads=args.threads)
    models = build_models(cfg)
    ready_s = time.time() - args.spawned
    events = EventsConfig(scoring=args.scoring)

    def chain() -> CaptionChain:
        return CaptionChain(models.classifier, build_tracker(models, events), models.make_embedder)

    def audio(start: int, n: int) -> np.ndarray:
        # A sweep plus noise, synthesised when fed: no long recording sits in memory.
        t = (start + np.arange(n)) / RATE
        rng = np.random.default_rng(start)
        return (0.3 * np.sin(2 * np.pi * (100 + 590 * (t % 10)) * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)

    def timed(block: int) -> tuple[list[float], list[float], float | None]:
        c, times, first = chain(), [], None
        for k in range(int(args.seconds * RATE) // block):
            blk = AudioBlock(audio(k * block, block)[:, None], RATE, 1e9 + k * block / RATE, time.time(), 0)
            t0 = time.perf_counter()
            out = c.feed(blk)
            times.append((time.perf_counter() - t0) * 1000)
            if first is None and any(isinstance(o, WindowScores) for o in out):
                first = time.time() - args.spawned
        return times[:WARMUP_BLOCKS], sorted(times[WARMUP_BLOCKS:]), first

    def p95(times: list[float]) -> float:
        return times[min(len(times) - 1, int(0.95 * len(times)))]

    warm, hop, first_scores_s = timed(HOP)
    per_second = [t * RATE / HOP for t in hop]
    warmup = max(warm) * RATE / HOP
    _, second, _ = timed(RATE)
    from procstat import status_mib  # bench/, beside this file

    rss = status_mib("VmHWM")

    def rows(outs: list) -> list:
        return [[o.type, o.label, round(o.start, 3), None if o.end is None else round(o.end, 3)]
                for o in outs if isinstance(o, CaptionEvent)]

    results = {}
    if not args.audio:  # a later round: timing only
        print(json.dumps({"p50": statistics.median(per_second), "p95": p95(per_second), "p95_1s": p95(second),
                          "warmup": warmup, "rss_mib": rss, "ready_s": ready_s, "first_scores_s": first_scores_s}))
        return
    data = np.load(args.audio)
    for name in data["names"]:
        c, rec, outs = chain(), data[f"rec_{name}"], []
        for i in range(0, rec.shape[0], 4410):
            outs += c.feed(AudioBlock(rec[i : i + 4410, None], RATE, 1e9 + i / RATE, 0.0, 1))
        outs += c.end_stream()
        results[str(name)] = {"embeddings": models.make_embedder(RATE).embed(rec).tolist(), "events": rows(outs)}
    c, outs, replay = chain(), [], data["replay"]
    for k in range(replay.shape[0]):
        outs += c.feed(EmbeddingBlock(replay[k : k + 1], 1e9 + 0.96 * k, 0.0, 2))
    outs += c.end_stream()
    results["replayed AudioSet"] = {"embeddings": [], "events": rows(outs)}
    print(json.dumps({
        "p50": statistics.median(per_second), "p95": p95(per_second), "p95_1s": p95(second), "warmup": warmup,
        "rss_mib": rss, "ready_s": ready_s, "first_scores_s": first_scores_s,
        "tensorflow_loaded": "tensorflow" in sys.modules, "results": results, "scoring": chain().tracker.scoring,
    }))


def _prepare(workdir: Path) -> tuple[Path, dict[str, Path], Path]:
    """The VGGish files (random weights, exported by the project's own export)
    and the recordings; run once per work directory (exports are kept)."""
    sys.path[:0] = [str(REPO), str(REPO / "tests")]
    import numpy as np
    import soundfile

    import helpers

    workdir.mkdir(parents=True, exist_ok=True)
    ckpt = workdir / "random_vggish.ckpt"
    if not ckpt.exists():
        helpers.write_checkpoint(helpers.random_vggish_weights(0), ckpt)
    # Calibration for the full-integer file: the synthetic set and speech that
    # the fidelity recordings below do not contain.
    calib = helpers.espeak_wav("Seven quiet ships sailed over the bay while the radio played jazz.",
                               workdir / "calibration_speech.wav", rate=16000)
    np.save(workdir / "calibration_speech.npy", soundfile.read(calib, dtype="float32")[0])
    tfl = {q: workdir / f"vggish_{q}.tflite" for q in ("float32", "int8", "int8-full")}
    for q, path in tfl.items():
        if not path.exists():
            code = ("import sys, numpy as np; from pipeline.quiet import import_tensorflow; import_tensorflow(); "
                    "from pipeline import vggish as v; q = sys.argv[3]; "
                    "cal = v.calibration_examples((np.load(sys.argv[4]),)) if q == 'int8-full' else None; "
                    "v.export_tflite(v.load_vggish(sys.argv[1]), sys.argv[2], q, calibration=cal)")
            subprocess.run([sys.executable, "-c", code, str(ckpt), str(path), q,
                            str(workdir / "calibration_speech.npy")], check=True, cwd=REPO)
    speech = helpers.espeak_wav("Hello, is anybody there? The train to Leeds leaves at nine. "
                                "Please mind the gap between the train and the platform.",
                                workdir / "speech.wav", rate=RATE)
    recs = {
        "speech": soundfile.read(speech, dtype="float32")[0],
        "tones": helpers.sine(440, 12.0, RATE, 0.3) + helpers.sine(1320, 12.0, RATE, 0.2),
        "noise": helpers.noise(12.0, RATE, seed=11),
        "chirp": helpers.chirp(12.0, RATE),
    }
    for rel in REAL_RECORDINGS:
        for site in map(Path, sys.path):
            if (site / rel).is_file():
                x, rate = soundfile.read(site / rel, dtype="float32", always_2d=True)
                if rate == RATE:
                    recs["real scene"] = x.mean(axis=1)
                break
    from pipeline.audioset import iter_clips, list_tfrecords

    clips = [clip.embeddings for clip in iter_clips(list_tfrecords(helpers.BAL_TRAIN)[:40])] \
        if helpers.BAL_TRAIN.is_dir() else []
    replay = np.concatenate(clips) if clips else np.zeros((0, 128), np.uint8)
    audio = workdir / "runtimes_audio.npz"
    np.savez(audio, names=np.array(list(recs)), replay=replay,
             **{f"rec_{k}": v.astype(np.float32) for k, v in recs.items()})
    return ckpt, tfl, audio


def _baseline_tree(workdir: Path, ref: str) -> Path:
    """The files of revision ``ref`` (``git archive``, made once, then reused;
    nothing is added to the repository's own metadata)."""
    sha = subprocess.run(["git", "rev-parse", "--short", ref], cwd=REPO, check=True, capture_output=True,
                         text=True).stdout.strip()
    tree = workdir / f"baseline-{sha}"
    if not (tree / "daemon").is_dir():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", sha], cwd=REPO, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def _moved(got: dict, want: dict) -> tuple[float, int, int]:
    """(share of uint8 values moved, largest move, values compared) over the recordings."""
    import numpy as np

    moved = total = biggest = 0
    for name, w in want.items():
        if w["embeddings"]:
            d = np.abs(np.array(got[name]["embeddings"], int) - np.array(w["embeddings"], int))
            moved, total, biggest = moved + int((d > 0).sum()), total + d.size, max(biggest, int(d.max()))
    return (moved / total if total else float("nan")), biggest, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120, help="audio timed per configuration")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; figures are medians over them")
    parser.add_argument("--edge-only", action="store_true",
                        help="only the edge profile (and today's path with --baseline): the budget, quickly")
    parser.add_argument("--baseline", metavar="REF", help="also run today's path from git revision REF")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "audiocap-bench")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--runtime", "--vggish", "--pca", "--audio", "--code", "--classifier"):
        parser.add_argument(hidden, default="", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--scoring", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--spawned", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    ckpt, tfl, audio = _prepare(args.workdir)
    import helpers  # on the path since _prepare

    bundle = str(REPO / "pipeline" / "models" / "audiocap-4class")  # whatever bundle is there now
    configs = []  # (label, runtime, vggish, threads, scoring, code)
    for threads in (() if args.edge_only else (1, 2)):
        configs.append((f"tensorflow, {threads} thread", "tensorflow", ckpt, threads, "auto", ""))
        configs += [(f"litert {q}, {threads} thread", "litert", tfl[q], threads, "auto", "")
                    for q in ("float32", "int8", "int8-full")]
    if args.edge_only:
        configs.append((EDGE, "litert", tfl["int8"], 1, "auto", ""))
    else:
        configs.append((WINDOW_RUN, "litert", tfl["int8"], 1, "window", ""))
    baseline = None
    if args.baseline:
        baseline = f"today's path ({args.baseline}), {EDGE}"
        configs.append((baseline, "litert", tfl["int8"], 1, "auto", str(_baseline_tree(args.workdir, args.baseline))))
    rounds: dict[str, list[dict]] = {label: [] for label, *_ in configs}
    for r in range(args.rounds):
        for label, runtime, vggish, threads, scoring, code in configs:
            env = dict(os.environ, OPENBLAS_NUM_THREADS="1", TF_NUM_INTRAOP_THREADS=str(threads),
                       TF_NUM_INTEROP_THREADS="1")
            cmd = [sys.executable, __file__, "--child", "--seconds", str(args.seconds), "--runtime", runtime,
                   "--vggish", str(vggish), "--pca", str(helpers.PCA_PATH), "--threads", str(threads),
                   "--audio", str(audio) if r == 0 else "", "--scoring", scoring, "--classifier", bundle,
                   "--code", code, "--spawned", repr(time.time())]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
            if proc.returncode != 0:
                sys.exit(f"{label} failed:\n{proc.stderr[-3000:]}")
            rounds[label].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    runs = {}
    for label, rs in rounds.items():
        runs[label] = dict(rs[0], **{k: statistics.median(x[k] for x in rs) for k in ("p50", "p95", "p95_1s")},
                           **{f"best_{k}": min(x[k] for x in rs) for k in ("p50", "p95", "p95_1s")},
                           warmup=statistics.median(x["warmup"] for x in rs),
                           rss_mib=max(x["rss_mib"] for x in rs))

    print(f"audiocap runtimes: whole chain per second of {RATE} Hz audio ({args.seconds:g} s timed in blocks of one "
          f"0.96 s hop; p95 1s: in 1 s blocks; {args.rounds} interleaved rounds); VGGish with random weights of the "
          f"published architecture; load average {os.getloadavg()[0]:.2f} (after the run)")
    ref = runs.get(baseline) if baseline else None
    print(f"{'':<46} {'median of rounds':^31} {'best round':^31}")
    head = (f"{'configuration':<46}" + f" {'p50 ms':>7} {'p95 ms':>7} {'p95 1s':>7} {'x today':>7}" * 2 +
            f" {'warm-up max':>11} {'peak RSS MiB':>12} {'ready s':>7} {'1st scores s':>12} {'TF':>5}")
    print(head)
    for label, r in runs.items():
        cols = ""
        for b in ("", "best_"):
            ratio = f"{r[b + 'p95'] / ref[b + 'p95']:.2f}" if ref else "-"
            cols += f" {r[b + 'p50']:>7.2f} {r[b + 'p95']:>7.2f} {r[b + 'p95_1s']:>7.2f} {ratio:>7}"
        print(f"{label:<46}{cols} {r['warmup']:>11.2f} {r['rss_mib']:>12.0f} {r['ready_s']:>7.2f} "
              f"{(r['first_scores_s'] or float('nan')):>12.2f} {str(r['tensorflow_loaded']):>5}")
    edge = runs[EDGE]
    print(f"\nedge profile ({EDGE}): p95 {edge['p95']:.2f} ms per second of audio, best round {edge['best_p95']:.2f} "
          f"(goal <= {GOAL_P95_MS:g} ms: {'met' if edge['p95'] <= GOAL_P95_MS else 'MISSED'}, best round "
          f"{'met' if edge['best_p95'] <= GOAL_P95_MS else 'MISSED'}); peak RSS {edge['rss_mib']:.0f} MiB "
          f"(goal <= {GOAL_RSS_MIB:g} MiB: {'met' if edge['rss_mib'] <= GOAL_RSS_MIB else 'MISSED'})")
    if ref:
        for b, what in (("", "median of rounds"), ("best_", "best round")):
            print(f"against today's path ({args.baseline}, same run, {what}): p50 x{edge[b + 'p50'] / ref[b + 'p50']:.2f}, "
                  f"p95 x{edge[b + 'p95'] / ref[b + 'p95']:.2f} (today p50 {ref[b + 'p50']:.2f} / p95 {ref[b + 'p95']:.2f} ms "
                  f"in hop blocks; {ref[b + 'p95_1s']:.2f} ms in its own bench's 1 s blocks)")
        print(f"peak RSS {edge['rss_mib']:.0f} MiB vs today's {ref['rss_mib']:.0f} MiB")
    if args.edge_only:
        return
    now, before = runs[EDGE], runs[WINDOW_RUN]
    print(f"per-second captions on the edge profile: p50 {now['p50']:.2f} ms vs {before['p50']:.2f} ms with the "
          f"window score (ratio {now['p50'] / before['p50']:.3f})")
    for base in ("litert float32, 1 thread", "tensorflow, 1 thread"):
        want = runs[base]["results"]
        print(f"\nfidelity against {base} (recordings: {', '.join(k for k in want if want[k]['embeddings'])}):")
        for label, r in runs.items():
            if label == base or label == WINDOW_RUN or not label.endswith("1 thread"):
                continue
            share, biggest, total = _moved(r["results"], want)
            same = [name for name in want if r["results"][name]["events"] == want[name]["events"]]
            n_events = sum(len(w["events"]) for w in want.values())
            print(f"  {label:<46} uint8 moved {share:6.2%} (max {biggest:>3} steps, {total} values); caption events "
                  f"identical on {len(same)}/{len(want)} inputs ({n_events} events)"
                  + ("" if len(same) == len(want) else f", differ on: {', '.join(n for n in want if n not in same)}"))


if __name__ == "__main__":
    main()
