"""What the cheaper resampler changes: kaiser_fast vs kaiser_best, a 16 kHz device, float64.

    python bench/resampling.py [--workdir DIR]

For generated recordings at 44.1 kHz (espeak-ng speech, tones, a chirp, noise)
it runs the streaming embedder three ways and compares with the reference
choice (44.1 kHz -> 16 kHz with resampy's kaiser_best):

* ``kaiser_fast``: resampy's cheaper filter on the same 44.1 kHz audio;
* ``device 16k``: the sound captured at 16 kHz directly (synthesised at 16 kHz,
  or sox's resampler for speech, standing in for the sound server's);
* ``resampy f64``: resampy's own float64 ``resample`` of the whole recording,
  as the published VGGish input code does (the streaming resampler computes
  the same filter in fixed chunks and groups of phases).

It prints the log-mel difference (weights-independent) and, after VGGish +
PCA + 8-bit quantisation, the fraction of uint8 values that move and by how
many steps; plus the cost of each resampler per second of audio. The VGGish
weights are seeded random (the real ones cannot be downloaded here), so the
embedding figures show how the front-end difference propagates through the
published architecture, not the real model's exact sensitivity.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
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
import soundfile  # noqa: E402

import helpers  # noqa: E402
from pipeline import audio, frontend, params  # noqa: E402
from pipeline.embedder import Embedder  # noqa: E402
from pipeline.postprocess import Postprocessor  # noqa: E402

RATE = 44100


def recordings(workdir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (audio at 44.1 kHz, the same sound at 16 kHz)."""
    out = {}
    text = "The quick brown fox jumps over the lazy dog. Please call me back when you get home."
    wav44 = helpers.espeak_wav(text, workdir / "speech44.wav", rate=RATE)
    wav16 = workdir / "speech16.wav"
    subprocess.run(["sox", str(wav44), "-r", "16000", str(wav16)], check=True, capture_output=True)
    out["speech (espeak-ng)"] = (soundfile.read(wav44, dtype="float32")[0], soundfile.read(wav16, dtype="float32")[0])
    for name, make in (
        ("tones 440+3000 Hz", lambda r: helpers.sine(440, 6.0, r, 0.3) + helpers.sine(3000, 6.0, r, 0.2)),
        ("chirp 100-6000 Hz", lambda r: helpers.chirp(6.0, r)),
        ("high tone 7.2 kHz", lambda r: helpers.sine(7200, 6.0, r, 0.4)),
    ):
        out[name] = (make(RATE), make(16000))
    rng = np.random.default_rng(0)
    white = rng.standard_normal(6 * RATE).astype(np.float32) * 0.2
    out["white noise"] = (white, audio.resample(white, RATE, 16000).astype(np.float32))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "audiocap-bench")
    parser.add_argument("--runtime", choices=("tensorflow", "litert"), default="litert")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    ckpt = args.workdir / "random_vggish.ckpt"
    if not ckpt.exists():
        helpers.write_checkpoint(helpers.random_vggish_weights(0), ckpt)
    if args.runtime == "litert":
        tfl = args.workdir / "vggish_float32.tflite"
        if not tfl.exists():
            subprocess.run([sys.executable, "-c", "import sys; from pipeline import vggish as v; "
                            "v.export_tflite(v.load_vggish(sys.argv[1]), sys.argv[2], 'float32')",
                            str(ckpt), str(tfl)], check=True, cwd=REPO)
        from pipeline.tflite import TFLiteModel

        model = TFLiteModel(tfl)
    else:
        from pipeline.vggish import load_vggish

        model = load_vggish(str(ckpt))
    post = Postprocessor(helpers.PCA_PATH)

    def embed(x, rate, filt):
        return Embedder(model, post, rate, filt).embed(x)

    def logmel(x, rate, filt):
        r = audio.StreamingResampler(rate, 16000, filt)
        return frontend._examples_from_16k(np.concatenate([r.process(x), r.flush()]))

    def embed_resampy(x, rate):
        ex = frontend.waveform_to_examples(x, rate)
        return post.postprocess(np.concatenate([model(ex[i : i + 1]) for i in range(len(ex))]))

    print("What the resampler changes, against 44.1 kHz -> 16 kHz with kaiser_best "
          f"(VGGish: random weights, {args.runtime} float32)")
    print(f"{'recording':<20} {'variant':<12} {'log-mel max|d|':>14} {'mean|d|':>8} {'uint8 moved':>11} {'steps p50/max':>13}")
    totals: dict[str, list[np.ndarray]] = {"kaiser_fast": [], "device 16k": [], "resampy f64": []}
    for name, (x44, x16) in recordings(args.workdir).items():
        ref_mel, ref = logmel(x44, RATE, "kaiser_best"), embed(x44, RATE, "kaiser_best")
        for variant, mel, emb in (
            ("kaiser_fast", logmel(x44, RATE, "kaiser_fast"), embed(x44, RATE, "kaiser_fast")),
            ("device 16k", logmel(x16, 16000, "kaiser_best"), embed(x16, 16000, "kaiser_best")),
            ("resampy f64", frontend.waveform_to_examples(x44, RATE), embed_resampy(x44, RATE)),
        ):
            n = min(len(ref), len(emb))
            d_mel = np.abs(mel[:n] - ref_mel[:n])
            steps = np.abs(emb[:n].astype(int) - ref[:n].astype(int))
            totals[variant].append(steps.ravel())
            moved = steps[steps > 0]
            print(f"{name:<20} {variant:<12} {d_mel.max():>14.4f} {d_mel.mean():>8.4f} {np.mean(steps > 0):>11.2%} "
                  f"{(int(np.median(moved)) if moved.size else 0):>6}/{steps.max():<6}")
    for variant, parts in totals.items():
        s = np.concatenate(parts)
        print(f"ALL {variant}: {np.mean(s > 0):.2%} of uint8 values move; of those, "
              f"{np.mean(s[s > 0] == 1) if (s > 0).any() else 0:.0%} by one step, max {s.max()} steps")

    x = helpers.chirp(10.0, RATE)
    for filt in ("kaiser_best", "kaiser_fast"):
        r = audio.StreamingResampler(RATE, 16000, filt)
        times = []
        for i in range(10):
            t0 = time.perf_counter()
            r.process(x[i * RATE : (i + 1) * RATE])
            times.append((time.perf_counter() - t0) * 1000)
        base = []
        for i in range(5):
            t0 = time.perf_counter()
            audio.resample(x[i * RATE : (i + 1) * RATE], RATE, 16000, filt)
            base.append((time.perf_counter() - t0) * 1000)
        print(f"cost per second of 44.1 kHz audio, {filt}: streaming polyphase {statistics.median(times):.2f} ms, "
              f"resampy.resample {statistics.median(base):.2f} ms (same process)")


if __name__ == "__main__":
    main()
