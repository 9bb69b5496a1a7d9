"""What the home bundle's alert scoring costs per second of sound, in one run.

    python bench/alerts.py [--embeddings 600] [--runs 5] [--threads 1]

Feeds the same AudioSet embeddings (from ``../shared``'s ``bal_train``, or
seeded random ones if it is absent) one at a time through the daemon's
:class:`pipeline.chain.CaptionChain` with the shipped ``audiocap-home``
bundle on the LiteRT runtime (the edge profile), under three trackers that
differ only in where the alert classes' scores come from:

* ``per-second only``: every class from the per-second model (one
  per-second model call per embedding; the baseline);
* ``+ window classes``: the calibrated window classes take the 10-s window
  model's score (one more window-model call per embedding);
* ``+ recent contexts``: as calibrated (``window_classes`` and
  ``recent_context``): one more window-model call per distinct context length.

Prints, per tracker, the fastest, median and slowest of ``--runs`` runs of
the chain's time per embedding (0.96 s of sound), in milliseconds, and the
ratio of the medians to the baseline's. The VGGish front end is not included: it is the
same under every tracker (``bench/runtimes.py`` times the whole chain).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the checkout, not bench/daemon.py

import numpy as np  # noqa: E402

from pipeline.chain import CaptionChain  # noqa: E402
from pipeline.classifier import load_classifier  # noqa: E402
from pipeline.events import make_tracker  # noqa: E402

sys.path.insert(1, str(REPO / "tests"))
from helpers import BAL_TRAIN  # noqa: E402  (../shared's bal_train, where the tests find it)


def _embeddings(n: int) -> tuple[np.ndarray, str]:
    if BAL_TRAIN.is_dir():
        from pipeline.audioset import iter_clips, list_tfrecords

        got: list[np.ndarray] = []
        for clip in iter_clips(list_tfrecords(BAL_TRAIN)[:200]):
            got.append(clip.embeddings)
            if sum(len(g) for g in got) >= n:
                break
        return np.concatenate(got)[:n], f"bal_train ({BAL_TRAIN})"
    return np.random.default_rng(0).integers(0, 256, (n, 128), dtype=np.uint8), "seeded random"


def _time(clf, tracker, e: np.ndarray) -> float:
    chain = CaptionChain(clf, tracker)
    t0 = time.perf_counter()
    for i in range(len(e)):
        chain.feed_embeddings(e[i : i + 1], 1e9 + 0.96 * i, 0.0)
    chain.end_stream()
    return (time.perf_counter() - t0) / len(e) * 1000.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--embeddings", type=int, default=600, help="embeddings per run")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="LiteRT threads")
    args = ap.parse_args()
    clf = load_classifier("audiocap-home", runtime="litert", num_threads=args.threads)
    e, source = _embeddings(args.embeddings)
    calibrated = make_tracker(clf)
    trackers = {
        "per-second only": make_tracker(clf, window_classes=()),
        "+ window classes": make_tracker(clf, recent_context={}),
        "+ recent contexts": calibrated,
    }
    _time(clf, calibrated, e[:50])  # warm-up: interpreters allocated, caches filled
    times: dict[str, list[float]] = {k: [] for k in trackers}
    for _ in range(args.runs):  # interleaved, so drift in the machine's speed hits every tracker alike
        for name, tracker in trackers.items():
            times[name].append(_time(clf, tracker, e))
    base = statistics.median(times["per-second only"])
    rows = {}
    for name, ts in times.items():
        ts = sorted(ts)
        med = statistics.median(ts)
        rows[name] = {"ms_per_embedding_min": round(ts[0], 3), "ms_per_embedding_p50": round(med, 3),
                      "ms_per_embedding_max": round(ts[-1], 3), "ratio_to_per_second_only": round(med / base, 2),
                      "window_classes": list(trackers[name].window_classes),
                      "recent_context": dict(trackers[name].recent_context or {})}
    print(json.dumps({"bundle": f"{clf.name}@{clf.version}", "runtime": clf.runtime, "threads": args.threads,
                      "embeddings": len(e), "runs": args.runs, "source": source, "trackers": rows}, indent=2))


if __name__ == "__main__":
    main()
