"""Front-end benchmark: the cost of each stage for one 0.96 s block of 44.1 kHz audio.

    python bench/frontend.py [--runs 30] [--threads 1] [--workdir DIR]

Prints the median (and p95) time of each stage, the whole chain, its fraction
of real time, and the process peak RSS. The VGGish weights are seeded random
numbers with the published architecture (the real weights cannot be
downloaded here); the cost does not depend on the values. TFLite files are
exported into --workdir (reused when already there).
Baselines measured in the same run: resampy.resample on the block (what the
published code calls) for the streaming resampler, Keras for the TFLite runs.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One BLAS thread, as the daemon runs: small matrix products only lose to
# thread hand-offs, badly so on a busy 2-core box.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import numpy as np  # noqa: E402

import helpers  # noqa: E402
from pipeline import audio, frontend, params  # noqa: E402
from pipeline.postprocess import Postprocessor  # noqa: E402


def timed(fn, runs: int) -> tuple[float, float]:
    """Median and p95 of ``runs`` calls, in milliseconds (after one warm-up call)."""
    fn()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000.0)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(0.95 * len(samples)))]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="TFLite interpreter threads")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "audiocap-bench")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    rate = 44100
    block_seconds = params.EXAMPLE_HOP_SECONDS
    n = int(round(rate * block_seconds))
    x = np.concatenate([helpers.chirp(5.0, rate), helpers.noise(5.0, rate, seed=1)]).astype(np.float32)
    block = x[:n]
    rows: list[tuple[str, float, float]] = []

    # Resampling: steady-state streaming (resampler primed with earlier audio).
    for filt in ("kaiser_best", "kaiser_fast"):
        r = audio.StreamingResampler(rate, params.SAMPLE_RATE, filt)
        r.process(x[n : 4 * n])
        pos = [4 * n]

        def step(r=r):
            r.process(x[pos[0] % (8 * n) : pos[0] % (8 * n) + n])
            pos[0] += n

        rows.append((f"resample {filt} (streaming)", *timed(step, args.runs)))
        rows.append((f"  baseline resampy.resample {filt}", *timed(lambda f=filt: audio.resample(block, rate, 16000, f), args.runs)))

    # The loudness of each 0.96 s (level_dbfs in captions and scores), on the same blocks.
    meter = audio.LevelMeter(rate)
    lpos = [0]

    def level_step():
        meter.add(x[lpos[0] % (8 * n) : lpos[0] % (8 * n) + n])
        lpos[0] += n

    rows.append(("level meter (dBFS)", *timed(level_step, args.runs)))

    x16 = audio.resample(x, rate, 16000)
    span = np.asarray(x16[: params.EXAMPLE_SPAN_SAMPLES], dtype=np.float64)
    rows.append(("log-mel (one example)", *timed(lambda: frontend._example_log_mel(span), args.runs)))
    example = frontend.waveform_to_examples(x16[: params.EXAMPLE_SPAN_SAMPLES], 16000)

    from pipeline.quiet import import_tensorflow

    import_tensorflow()  # its start-up lines would break into the table
    from pipeline import vggish as vg
    from pipeline.tflite import TFLiteModel

    ckpt = args.workdir / "random_vggish.ckpt"
    if not ckpt.exists():
        helpers.write_checkpoint(helpers.random_vggish_weights(0), ckpt)
    t0 = time.perf_counter()
    model = vg.load_vggish(str(ckpt))
    load_s = time.perf_counter() - t0
    keras_ms = timed(lambda: model(example), args.runs)
    rows.append(("VGGish Keras tf.function", *keras_ms))
    lite = {}
    for q in ("float32", "int8"):
        path = args.workdir / f"vggish_{q}.tflite"
        if not path.exists():
            # In a child process: the converter's memory would otherwise count in our peak RSS.
            import subprocess

            subprocess.run(
                [sys.executable, "-c",
                 "import sys; from pipeline import vggish as v; "
                 "v.export_tflite(v.load_vggish(sys.argv[1]), sys.argv[2], sys.argv[3])",
                 str(ckpt), str(path), q],
                check=True, cwd=REPO,
            )
        lite[q] = TFLiteModel(path, num_threads=args.threads)
        rows.append((f"VGGish TFLite {q} ({args.threads} thread)", *timed(lambda m=lite[q]: m(example), args.runs)))

    pca_path = helpers.PCA_PATH
    if not pca_path.is_file():
        sys.exit(f"bench needs the PCA parameters at {pca_path} (python -m pipeline.assets pca)")
    post = Postprocessor(pca_path)
    raw = model(example)
    rows.append(("PCA + quantise", *timed(lambda: post.postprocess(raw), args.runs)))

    from pipeline.embedder import Embedder

    for label, fn, filt in (
        ("chain: best resample + Keras", model, "kaiser_best"),
        ("chain: best resample + TFLite int8", lite["int8"], "kaiser_best"),
        ("chain: fast resample + TFLite int8", lite["int8"], "kaiser_fast"),
    ):
        emb = Embedder(fn, post, rate, filt)
        emb.process(x[: 2 * n])
        pos = [2 * n]

        def chain(emb=emb):
            start = pos[0] % (9 * n)
            out = emb.process(x[start : start + n])
            pos[0] += n
            return out

        rows.append((label, *timed(chain, args.runs)))

    print(f"audiocap front-end benchmark: one {block_seconds:.2f} s block of {rate} Hz audio, "
          f"{args.runs} runs, medians (p95). VGGish: random weights, published architecture "
          f"(load {load_s:.1f} s).")
    width = max(len(r[0]) for r in rows)
    print(f"{'stage':<{width}}  {'median ms':>10}  {'p95 ms':>8}  {'x real time':>11}")
    for name, med, p95 in rows:
        print(f"{name:<{width}}  {med:>10.2f}  {p95:>8.2f}  {med / (block_seconds * 1000):>11.4f}")
    by = {r[0]: r[1] for r in rows}
    print(f"ratio streaming/resampy (best): {by['resample kaiser_best (streaming)'] / by['  baseline resampy.resample kaiser_best']:.2f}")
    print(f"ratio TFLite int8/Keras: {by[f'VGGish TFLite int8 ({args.threads} thread)'] / by['VGGish Keras tf.function']:.3f}")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB (whole process: TensorFlow, Keras VGGish and both TFLite models loaded)")
    print(f"load average during the run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
