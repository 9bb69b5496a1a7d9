"""Metrics, threshold calibration and plots for the four-class classifier."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt

from pipeline import params

_LOGGER = logging.getLogger(__name__)


def _check(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> tuple[npt.NDArray, npt.NDArray]:
    y = np.asarray(y_true).astype(np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 2 or s.shape != y.shape:
        raise ValueError(f"targets and scores must both be [N, C]; got {y.shape} and {s.shape}")
    return y, s


def average_precisions(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Per-class average precision (NaN for a class without positives), ``[C]``."""
    from sklearn.metrics import average_precision_score

    y, s = _check(y_true, scores)
    return np.array(
        [average_precision_score(y[:, c], s[:, c]) if y[:, c].any() else np.nan for c in range(y.shape[1])]
    )


def top1_accuracy(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> tuple[float, int]:
    """Accuracy of argmax on clips carrying exactly one of the classes.

    Returns:
      ``(accuracy, number of such clips)``; accuracy NaN when there are none.
    """
    y, s = _check(y_true, scores)
    single = y.sum(axis=1) == 1
    n = int(single.sum())
    if not n:
        return float("nan"), 0
    return float(np.mean(s[single].argmax(axis=1) == y[single].argmax(axis=1))), n


def binary_accuracy(y_true: npt.ArrayLike, scores: npt.ArrayLike, threshold: float = 0.5) -> float:
    """Keras' ``binary_accuracy``: the share of all N*C cells right at ``threshold``.

    This is what Keras prints for binary cross-entropy on one-hot targets; with
    four classes a model that always says "no" already scores 75 %.
    """
    y, s = _check(y_true, scores)
    return float(np.mean((s > threshold) == (y > 0)))


def calibrate_thresholds(
    y_true: npt.ArrayLike, scores: npt.ArrayLike, names: Sequence[str] = params.CLASS_NAMES
) -> dict[str, float]:
    """Per-class threshold that maximises F1 on the given (validation) clips.

    Returns:
      ``{class name: threshold}``; ``params.DEFAULT_THRESHOLD`` for a class
      without positives.
    """
    from sklearn.metrics import precision_recall_curve

    y, s = _check(y_true, scores)
    out = {}
    for c, name in enumerate(names):
        if not y[:, c].any():
            out[name] = params.DEFAULT_THRESHOLD
            continue
        prec, rec, thr = precision_recall_curve(y[:, c], s[:, c])
        f1 = 2 * prec[:-1] * rec[:-1] / np.maximum(prec[:-1] + rec[:-1], 1e-12)
        out[name] = float(thr[int(np.argmax(f1))])
    return out


def compute_metrics(
    y_true: npt.ArrayLike,
    scores: npt.ArrayLike,
    thresholds: dict[str, float] | None = None,
    names: Sequence[str] = params.CLASS_NAMES,
) -> dict[str, Any]:
    """Everything ``evaluate`` reports, as a JSON-ready dict.

    Args:
      y_true: ``[N, C]`` 0/1 targets (ontology mapping; negatives included).
      scores: ``[N, C]`` scores in [0, 1].
      thresholds: per-class decision thresholds (default 0.5 each).
      names: class names in column order.

    Returns:
      ``mAP``, ``per_class`` (AP, ROC AUC, precision, recall, F1, threshold,
      positives), ``macro_f1``, ``top1_accuracy`` / ``top1_clips``,
      ``binary_accuracy`` (Keras-style at 0.5), ``counts``.
    """
    from sklearn.metrics import roc_auc_score

    y, s = _check(y_true, scores)
    thr = {n: params.DEFAULT_THRESHOLD for n in names} if thresholds is None else thresholds
    aps = average_precisions(y, s)
    per_class = {}
    f1s = []
    for c, name in enumerate(names):
        t = float(thr.get(name, params.DEFAULT_THRESHOLD))
        pred = s[:, c] >= t
        tp = int(np.sum(pred & (y[:, c] > 0)))
        fp = int(np.sum(pred & (y[:, c] == 0)))
        fn = int(np.sum(~pred & (y[:, c] > 0)))
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        f1s.append(f1)
        has_both = 0 < y[:, c].sum() < len(y)
        per_class[name] = {
            "ap": _num(aps[c]),
            "roc_auc": _num(roc_auc_score(y[:, c], s[:, c])) if has_both else None,
            "threshold": t,
            "precision": p,
            "recall": r,
            "f1": f1,
            "positives": int(y[:, c].sum()),
        }
    top1, n_single = top1_accuracy(y, s)
    return {
        "mAP": _num(np.nanmean(aps)) if np.any(~np.isnan(aps)) else None,
        "macro_f1": float(np.mean(f1s)),
        "top1_accuracy": _num(top1),
        "binary_accuracy": binary_accuracy(y, s),
        "per_class": per_class,
        "counts": {
            "clips": int(len(y)),
            "single_label_clips": n_single,
            "multi_label_clips": int(np.sum(y.sum(axis=1) > 1)),
            "negative_clips": int(np.sum(y.sum(axis=1) == 0)),
            "positives": {n: int(y[:, c].sum()) for c, n in enumerate(names)},
        },
    }


def _num(v: Any) -> float | None:
    v = float(v)
    return None if np.isnan(v) else round(v, 6)


def confusion(
    y_true: npt.ArrayLike, scores: npt.ArrayLike, thresholds: dict[str, float], names: Sequence[str] = params.CLASS_NAMES
) -> npt.NDArray[np.int64]:
    """Confusion matrix ``[C+1, C+1]`` over clips with at most one true class.

    Row/column ``C`` is "none". The prediction is the highest-scoring class
    among those above their threshold, or "none".
    """
    y, s = _check(y_true, scores)
    keep = y.sum(axis=1) <= 1
    y, s = y[keep], s[keep]
    c = y.shape[1]
    t = np.array([thresholds.get(n, params.DEFAULT_THRESHOLD) for n in names])
    true = np.where(y.sum(axis=1) == 1, y.argmax(axis=1), c)
    above = s >= t
    masked = np.where(above, s, -np.inf)
    pred = np.where(above.any(axis=1), masked.argmax(axis=1), c)
    m = np.zeros((c + 1, c + 1), dtype=np.int64)
    np.add.at(m, (true, pred), 1)
    return m


def plot_all(
    out_dir: str | os.PathLike,
    y_true: npt.ArrayLike,
    scores: npt.ArrayLike,
    thresholds: dict[str, float],
    history: dict[str, list[float]] | None = None,
    names: Sequence[str] = params.CLASS_NAMES,
) -> list[Path]:
    """Writes ``learning_curves.png``, ``pr_curves.png``, ``confusion.png``.

    Returns:
      The written paths.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    y, s = _check(y_true, scores)
    written = []
    if history:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for key, vals in history.items():
            ax = axes[0] if "loss" in key else axes[1]
            ax.plot(range(1, len(vals) + 1), vals, label=key)
        axes[0].set_title("loss")
        axes[1].set_title("validation metrics")
        for ax in axes:
            ax.set_xlabel("epoch")
            if ax.get_lines():
                ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(out / "learning_curves.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 5))
    aps = average_precisions(y, s)
    for c, name in enumerate(names):
        if not y[:, c].any():
            continue
        prec, rec, _ = precision_recall_curve(y[:, c], s[:, c])
        ax.plot(rec, prec, label=f"{name} (AP {aps[c]:.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"precision-recall, mAP {np.nanmean(aps):.3f}")
    ax.legend()
    fig.tight_layout()
    written.append(out / "pr_curves.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)
    m = confusion(y, s, thresholds, names)
    labels = [*names, "none"]
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.imshow(m / np.maximum(m.sum(axis=1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion (clips with at most one class)")
    fig.tight_layout()
    written.append(out / "confusion.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)
    return written


BASELINE = "logistic regression per class on mean+max pooled embeddings (x / 255), trained on the grouped training side"


def pooled_features(x: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """uint8 ``[N, 10, 128]`` clips -> float32 ``[N, 256]``: the mean and the max over time, / 255."""
    f = np.asarray(x, dtype=np.float32) / 255.0
    return np.concatenate([f.mean(axis=1), f.max(axis=1)], axis=1)


def baseline_scores(
    x_train: npt.ArrayLike, y_train: npt.ArrayLike, x_eval: npt.ArrayLike, seed: int = 0
) -> npt.NDArray[np.float32]:
    """The issue's reference model, fitted here: one logistic regression per class
    (standardised mean+max pooled embeddings, L2, C = 1) -> float32 ``[N_eval, C]``.

    A class with no positive (or no negative) training clip scores its training rate.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(pooled_features(x_train))
    a, b = scaler.transform(pooled_features(x_train)), scaler.transform(pooled_features(x_eval))
    y = np.asarray(y_train)
    out = np.zeros((b.shape[0], y.shape[1]), np.float32)
    for c in range(y.shape[1]):
        if y[:, c].min() == y[:, c].max():
            out[:, c] = float(y[:, c].mean())
            continue
        lr = LogisticRegression(C=1.0, max_iter=2000, random_state=seed).fit(a, y[:, c])
        out[:, c] = lr.predict_proba(b)[:, 1]
    return out


BOOTSTRAP_DRAWS = 1000
"""Draws of every bootstrap interval the evaluations give (AP margins here, the timeline's F1)."""
INTERVAL_LEVEL = 0.9
"""Share of the draws those intervals hold (the central part)."""


def central_interval(values: npt.ArrayLike, level: float = INTERVAL_LEVEL) -> tuple[float, float]:
    """The central ``level`` share of bootstrap draws, ``(low, high)`` rounded to 4 decimals."""
    lo, hi = np.quantile(np.asarray(values, np.float64), [(1 - level) / 2, (1 + level) / 2])
    return round(float(lo), 4), round(float(hi), 4)


def ap_margin_interval(
    y: npt.ArrayLike, model: npt.ArrayLike, base: npt.ArrayLike, draws: int = BOOTSTRAP_DRAWS,
    level: float = INTERVAL_LEVEL, seed: int = 0,
) -> list[tuple[float, float] | None]:
    """Per class, a paired bootstrap interval of ``AP(model) - AP(base)``.

    The evaluation clips are drawn with replacement ``draws`` times; both
    models are scored on the same draw, so what the interval shows is how
    much the margin depends on which clips happened to be in the split (with
    a few dozen positives, a lot). ``None`` for a class without positives.

    Returns:
      ``[C]`` of ``(low, high)``, the central ``level`` share of the draws.
    """
    from sklearn.metrics import average_precision_score

    y, m = _check(y, model)
    _, b = _check(y, base)
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(y), size=(draws, len(y)))
    out: list[tuple[float, float] | None] = []
    for c in range(y.shape[1]):
        if not y[:, c].any():
            out.append(None)
            continue
        diffs = [average_precision_score(y[r, c], m[r, c]) - average_precision_score(y[r, c], b[r, c])
                 for r in rows if y[r, c].any()]
        out.append(central_interval(diffs, level))
    return out


def _with_baseline(result: dict[str, Any], clips_train: Any, y_train: npt.NDArray, clips_eval: Any,
                   y_eval: npt.NDArray, names: Sequence[str], model_scores: npt.NDArray) -> None:
    base = baseline_scores(clips_train.x, y_train, clips_eval.x)
    ap_base = {n: _ap(y_eval[:, c], base[:, c]) for c, n in enumerate(names)}
    ap_model = {n: result["per_class"][n]["ap"] for n in names}
    result["baseline"] = {
        "model": BASELINE,
        "train_clips": int(len(clips_train)),
        "mAP": round(float(np.nanmean([v for v in ap_base.values() if v is not None])), 6),
        "per_class_ap": ap_base,
    }
    result["ap_over_baseline"] = {
        n: (round(ap_model[n] - ap_base[n], 6) if ap_model[n] is not None and ap_base[n] is not None else None)
        for n in names
    }
    result["ap_over_baseline_interval"] = {
        "level": INTERVAL_LEVEL,
        "method": f"paired bootstrap over the evaluation clips ({BOOTSTRAP_DRAWS} draws)",
        "per_class": dict(zip(names, ap_margin_interval(y_eval, model_scores, base))),
    }


def _ap(y: npt.NDArray, s: npt.NDArray) -> float | None:
    from sklearn.metrics import average_precision_score

    if y.sum() == 0:
        return None
    return round(float(average_precision_score(y, s)), 6)


def evaluate_bundle(
    model_dir: str | os.PathLike | None,
    data: str | os.PathLike | Sequence[str | os.PathLike],
    runtime: str = "keras",
    split: str = "all",
    val_fraction: float = 0.2,
    short: str | None = None,
    baseline: bool = False,
) -> dict[str, Any]:
    """Scores tfrecords with a bundle and computes :func:`compute_metrics`.

    The class targets come from the bundle's own ``classes[].label_indices``
    (the mapping it was trained with), so no label files are needed.

    Args:
      model_dir: bundle directory (None: the shipped bundle).
      data: tfrecord directory/glob/files.
      runtime: ``keras``, ``litert`` or ``auto``.
      split: ``all`` clips, or only the ``val``/``train`` side of the grouped split.
      val_fraction: the grouped split's validation share.
      short: ``skip`` or ``pad`` short clips (default: what the bundle was
        trained with, so its recorded validation metrics reproduce).
      baseline: also fit :func:`baseline_scores` on the grouped training side
        and report its per-class AP next to the bundle's (``split="val"`` only).

    Returns:
      The metrics dict plus ``model``, ``data``, ``split``, ``ingest``; with
      four classes of the default set among others, ``four_class_mAP``; with
      ``baseline``, ``baseline`` and ``ap_over_baseline``.
    """
    if baseline and split != "val":
        raise ValueError("--baseline is fitted on the grouped training side and scored on the validation side: "
                         "use it with --split val")
    from pipeline.classifier import load_classifier
    from pipeline.labels import ClassMap
    from train import data as data_mod

    clf = load_classifier(model_dir, runtime=runtime)
    class_map = ClassMap.from_metadata(clf.metadata["classes"])
    if short is None:
        short = ((clf.metadata.get("training") or {}).get("hyperparameters") or {}).get("short", "skip")
    clips, stats = data_mod.load_clips(data, short=short, num_labels=params.AUDIOSET_NUM_LABELS)
    train_side = None
    if split != "all":
        tr, va = data_mod.grouped_split(clips.video_id, val_fraction)
        train_side = clips.subset(tr)
        clips = clips.subset(va if split == "val" else tr)
    y = clips.targets(class_map)
    scores = np.concatenate([clf.predict(clips.x[i : i + 4096]) for i in range(0, max(len(clips), 1), 4096)]) if len(clips) else np.zeros((0, len(clf.classes)), np.float32)
    result = compute_metrics(y, scores, clf.thresholds, clf.classes) if len(clips) else {"counts": {"clips": 0}}
    four = [c for c in params.CLASS_NAMES if c in clf.classes]
    if len(clips) and len(four) == len(params.CLASS_NAMES) and len(clf.classes) > len(four):
        result["four_class_mAP"] = round(float(np.mean([result["per_class"][c]["ap"] for c in four])), 6)
    if baseline and len(clips):
        _with_baseline(result, train_side, train_side.targets(class_map), clips, y, clf.classes, scores)
    result.update(
        {
            "model": f"{clf.name}@{clf.version}",
            "bundle": str(clf.path),
            "runtime": clf.runtime,
            "data": [os.fspath(d) for d in ([data] if isinstance(data, (str, os.PathLike)) else data)],
            "split": split if split == "all" else f"grouped {split} ({val_fraction:.0%} by video_id)",
            "ingest": stats.as_dict(),
            "short_clips": short,
        }
    )
    return result
