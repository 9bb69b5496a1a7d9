"""Which score should an urgent class be captioned from? An offline comparison on the caption timeline.

    python scripts/alert_contexts.py [--model pipeline/models/audiocap-home] [--data DIR]

For each urgent class of the bundle, on the streams ``audiocap-train timeline
--calibrate`` uses (calibration half, seeds 101 and 102) and the report stream
(report half, seed 0), it compares these scores:

* ``seconds``: the per-second model; ``window``: the 10-s window model (both
  collected through the daemon's chain, as the calibration does);
* ``recentK``: the window model's score of the last K embeddings alone
  (repeated to fill the window);
* ``window+recentK``: the higher of ``window`` and ``recentK`` (what the
  tracker's ``recent_context`` gives);

calibrating each source alone as the timeline calibration does for an urgent
class (best F1 within the false-alarm budget), then scoring the report
stream. Prints one line per class and source: calibration F1, and on the
report stream F1, misses, start delay, share of events on the wall within
2 s, captions and false alarms. The choice is the calibration F1's; the
report figures are there to see whether it holds on other clips.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.classifier import load_classifier  # noqa: E402
from pipeline.labels import ClassMap  # noqa: E402
from train import timeline as tl  # noqa: E402

sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import BAL_TRAIN  # noqa: E402  (../shared's bal_train, where the tests and benches find it)

CONTEXTS = (1, 2, 3, 4, 6)


def recent_alone(clf, stream, lookahead: int, k: int) -> np.ndarray:
    """The window model's score of the k embeddings ending ``lookahead`` after each one (edge-padded)."""
    e = stream.embeddings
    n = len(e)
    out = np.zeros((n, len(clf.classes)), np.float32)
    for a in range(0, n, 1024):
        idx = np.arange(a, min(a + 1024, n))
        ctx = np.clip(idx[:, None] + lookahead + np.arange(-k + 1, 1)[None, :], 0, n - 1)
        out[idx] = clf.predict(e[np.take(ctx, np.arange(10) % k, axis=1)])
    return out


def scores_of(clf, streams, lookahead: int) -> dict[str, np.ndarray]:
    def cat(f):
        return np.concatenate([f(s) for s in streams])

    got = {"seconds": cat(lambda s: tl.collect_scores(clf, s, lookahead)),
           "window": cat(lambda s: tl.collect_scores(clf, s, lookahead, "window"))}
    for k in CONTEXTS:
        got[f"recent{k}"] = cat(lambda s: recent_alone(clf, s, lookahead, k))
        got[f"window+recent{k}"] = np.maximum(got["window"], got[f"recent{k}"])
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pipeline/models/audiocap-home")
    ap.add_argument("--data", default=str(BAL_TRAIN))
    ap.add_argument("--budget", type=float, default=tl.URGENT_MAX_FALSE_ALARMS_PER_HOUR,
                    help="false alarms per hour allowed on the calibration streams")
    args = ap.parse_args()
    clf = load_classifier(args.model, runtime="litert")
    cmap = ClassMap.from_metadata(clf.metadata["classes"])
    lookahead = int((clf.metadata.get("tracker") or {}).get("lookahead", 1))
    cal_clips, cal_y = tl.timeline_clips(args.data, cmap, half="calibration")
    cal_streams = [tl.make_stream(cal_clips, cal_y, seed=s) for s in (101, 102)]
    rep_clips, rep_y = tl.timeline_clips(args.data, cmap, half="report")
    rep_stream = tl.make_stream(rep_clips, rep_y, seed=0)
    cal, rep = scores_of(clf, cal_streams, lookahead), scores_of(clf, [rep_stream], lookahead)
    cal_t = np.concatenate([s.labels for s in cal_streams])
    rep_t = rep_stream.labels
    for name in (c for c in clf.classes if clf.urgent.get(c)):
        k = clf.classes.index(name)
        print(f"== {name}: {len(tl._runs(rep_t[:, k] > 0))} events on the report stream")
        for src in cal:
            res = tl.calibrate(cal[src][:, [k]], cal_t[:, [k]], [name], urgent=[name],
                               urgent_max_false_alarms_per_hour=args.budget)
            hold = int(round(res["hold_s"][name] / tl.STEP))
            caps = tl.simulate_tracker(np.nan_to_num(rep[src][:, k]).tolist(), res["on"][name], res["off"][name],
                                       1, hold)
            # An urgent caption starts after one embedding, published once the look-ahead has been heard.
            shown = [tl.Caption(0, a, b, shown=a + 1 + lookahead, gone=b + lookahead) for a, b in caps]
            s = tl.score_timeline(rep_t[:, [k]], shown, [name])["per_class"][name]
            print(f"{src:16s} calibration F1 {res['per_class'][name]['segment_f1']:.3f} | report F1 {s['segment_f1']} "
                  f"missed {s['missed']}/{s['events']} start p50 {s['start_delay_p50']} "
                  f"within 2 s {s.get('shown_within_2s')} captions {s['captions']} false alarms {s['false_alarms']} "
                  f"({s['false_alarms_per_hour']} per hour)")


if __name__ == "__main__":
    main()
