"""How far could better calibration or segmentation take a bundle on the caption timeline? Two upper bounds.

    python scripts/timeline_bounds.py [--model pipeline/models/audiocap-4class] [--data DIR]

Both cheat on purpose: they are tuned on the very report stream they are
scored on (report half, seed 0, as ``audiocap-train timeline`` reports), so
an honest setting of the same model can hardly beat them there (the first is
bounded by the calibration's own grid, not by every possible tracker).

* **tracker tuned on the report stream**: the bundle's per-second scores
  through the chain, with the timeline calibration (``train.timeline.calibrate``:
  thresholds, minimum duration, hold, end-delay bound) run on the report
  stream itself, with no false-alarm cap and with a cap of 20 %;
* **clip aligned, thresholds tuned on the report stream**: the clip
  classifier on each whole clip, exactly aligned with it (a perfect
  segmentation), each class's threshold the one with the best F1 on the
  report stream.

If the issue's segment F1 target is above both, no tracker and no
segmentation reaches it with this classifier: the classification itself must
get better.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.classifier import load_classifier  # noqa: E402
from pipeline.labels import ClassMap  # noqa: E402
from pipeline.events import make_tracker  # noqa: E402
from train import timeline as tl  # noqa: E402

sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import BAL_TRAIN  # noqa: E402  (../shared's bal_train, where the tests and benches find it)

CAP = 0.2


def best_threshold_counts(score: np.ndarray, truth: np.ndarray) -> tuple[float, int, int, int]:
    """The threshold with the best F1 of one class on the grid, and its ``(tp, fp, fn)``."""
    order = np.argsort(-score, kind="stable")
    s, t = score[order], truth[order]
    tp = np.cumsum(t)
    fp = np.cumsum(~t)
    last = np.r_[s[1:] != s[:-1], True]  # a threshold takes every tied score at once
    tp, fp, cut = tp[last], fp[last], s[last]
    fn = t.sum() - tp
    f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    i = int(np.argmax(f1))
    return float(cut[i]), int(tp[i]), int(fp[i]), int(fn[i])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pipeline/models/audiocap-4class")
    ap.add_argument("--data", default=str(BAL_TRAIN))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    clf = load_classifier(args.model, runtime="litert")
    classes = list(clf.classes)
    lookahead = int((clf.metadata.get("tracker") or {}).get("lookahead", 1))
    clips, y = tl.timeline_clips(args.data, ClassMap.from_metadata(clf.metadata["classes"]), half="report")
    stream = tl.make_stream(clips, y, seed=0)
    truth = stream.labels > 0
    out: dict = {"model": f"{clf.name}@{clf.version}", "stream": {"half": "report", "seed": 0,
                                                                 "embeddings": len(stream)}}
    shipped = tl.score_timeline(stream.labels, tl.run_chain(clf, make_tracker(clf), stream)[0], classes)
    out["daemon_as_shipped"] = {k: shipped[k] for k in ("segment_f1", "false_alarm_share", "missed")}
    sc = tl.collect_scores(clf, stream, lookahead)
    for cap in (None, CAP):
        st = tl.calibrate(sc, stream.labels, classes, cap)
        out[f"tracker_tuned_on_report{'' if cap is None else f'_cap{cap:g}'}"] = st["timeline"]
    a_caps, a_sc = tl.clip_aligned(clf, clips, stream)
    out["clip_aligned_at_bundle_thresholds"] = tl.score_timeline(stream.labels, a_caps, classes)["segment_f1"]
    picks = [best_threshold_counts(a_sc[:, k], truth[:, k]) for k in range(len(classes))]
    tp, fp, fn = (sum(p[i] for p in picks) for i in (1, 2, 3))
    thr = np.array([p[0] for p in picks])
    tuned = tl.score_timeline(stream.labels, tl.captions_from_decisions(a_sc >= thr, a_sc), classes)
    out["clip_aligned_thresholds_tuned_on_report"] = {
        "segment_f1": round(2 * tp / max(2 * tp + fp + fn, 1), 4),
        "false_alarm_share": tuned["false_alarm_share"], "missed": tuned["missed"],
        "per_class_f1": {c: round(2 * p[1] / max(2 * p[1] + p[2] + p[3], 1), 4) for c, p in zip(classes, picks)},
        "thresholds": {c: round(p[0], 4) for c, p in zip(classes, picks)},
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
