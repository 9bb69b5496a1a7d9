"""How much would more data help? A learning curve on the grouped validation split.

    python scripts/learning_curve.py [--model attention_mil] [--fractions 0.125 0.25 0.5 1] [--seeds 0 1]

Trains one model per (share of the training videos, seed) with
``FitConfig.train_fraction`` (nested shares: a smaller share's videos are in
every larger one) and scores each on the *whole*, unchanged validation side.
Clip models (``attention_mil``, ``mean_mlp``) get the same number of gradient
steps at every share (epochs scaled by 1 / share, the best epoch kept as
always), so a small share is not merely under-trained; scene-trained models
(``stream_gru``) cut the same number of scene windows per epoch from whatever
clips they have, so they keep their epochs.

Prints one row per share: training clips, validation mAP and top-1 of the
window output (mean and spread over seeds) and, for models with per-second
scores, the per-second micro F1 and mAP at look-ahead 1 on the validation
stream; then the gain per doubling of the data between the last two shares.
Writes ``curve.png`` and ``curve.json`` into ``--out``. Runs that already have
a ``metrics.json`` are read, not retrained.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train import data as data_mod  # noqa: E402
from train import fit as fit_mod  # noqa: E402
from train import models  # noqa: E402

sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import BAL_TRAIN  # noqa: E402  (../shared's bal_train, where the tests and benches find it)



def run_one(cfg: fit_mod.FitConfig, clips, stats) -> dict:
    out = Path(cfg.out)
    if not (out / "metrics.json").is_file():
        fit_mod.fit(cfg, clips, stats)
    info = json.loads((out / "metrics.json").read_text())
    row = {"fraction": cfg.train_fraction, "seed": cfg.seed, "epochs": cfg.epochs,
           "train_clips": info["data"]["train_rows"], "train_videos": info["data"].get("train_videos"),
           "mAP": info["metrics"]["mAP"], "top1": info["metrics"]["top1_accuracy"], "best_epoch": info["best_epochs"][0],
           "per_class_ap": {c: v["ap"] for c, v in info["metrics"]["per_class"].items()}}
    sec = (info.get("per_second") or {}).get("validation") or {}
    la1 = sec.get("L1")
    if la1:
        row["seconds_f1"], row["seconds_mAP"] = la1["micro_f1"], la1["mAP"]
    return row


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for f in sorted({r["fraction"] for r in rows}):
        rs = [r for r in rows if r["fraction"] == f]
        s = {"fraction": f, "train_clips": int(np.mean([r["train_clips"] for r in rs])), "runs": len(rs)}
        for key in ("mAP", "top1", "seconds_f1", "seconds_mAP"):
            v = [r[key] for r in rs if r.get(key) is not None]
            if v:
                s[key], s[key + "_spread"] = float(np.mean(v)), float(np.max(v) - np.min(v))
        s["per_class_ap"] = {c: float(np.mean([r["per_class_ap"][c] for r in rs])) for c in rs[0]["per_class_ap"]}
        out.append(s)
    return out


def per_doubling(summary: list[dict], key: str) -> float | None:
    """Gain of ``key`` per doubling of the training clips between the two largest shares."""
    pts = [s for s in summary if key in s]
    if len(pts) < 2:
        return None
    a, b = pts[-2], pts[-1]
    return (b[key] - a[key]) / math.log2(b["train_clips"] / a["train_clips"])


def plot(path: Path, summary: list[dict], title: str, targets: dict[str, float] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [(k, label) for k, label in (("mAP", "clip mAP (window output)"), ("top1", "clip top-1"),
                                         ("seconds_f1", "per-second micro F1, look-ahead 1"),
                                         ("seconds_mAP", "per-second mAP, look-ahead 1")) if k in summary[0]]
    fig, ax = plt.subplots(figsize=(9.5, 4.2), dpi=120)
    n = [s["train_clips"] for s in summary]
    for k, label in keys:
        y = [s[k] for s in summary]
        err = [s[k + "_spread"] / 2 for s in summary]
        line = ax.errorbar(n, y, yerr=err, marker="o", capsize=3, label=label)
        if targets and k in targets:
            ax.axhline(targets[k], color=line[0].get_color(), ls="--", lw=1, label=f"target: {label} {targets[k]:g}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(n, [f"{c:,}\n({s['fraction']:g})" for c, s in zip(n, summary)])
    ax.set_xlabel("training clips (share of the training videos)")
    ax.set_ylabel("on the grouped validation split")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(BAL_TRAIN))
    ap.add_argument("--out", default="runs/learning-curve")
    ap.add_argument("--model", default="attention_mil", choices=models.MODEL_NAMES)
    ap.add_argument("--classes", default="", help="class set (default: the four classes)")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.125, 0.25, 0.5, 1.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--epochs", type=int, default=16, help="epochs at the full share")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--dropout", type=float, default=0.5)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--target", action="append", default=[], metavar="KEY=VALUE",
                    help="draw a target as a dashed line, e.g. mAP=0.80 top1=0.92 seconds_f1=0.78")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = fit_mod.FitConfig(data=[args.data], out="", model=args.model, classes=args.classes, hidden=args.hidden,
                             dropout=args.dropout, batch_size=args.batch_size, short="pad", verbose=0)
    scenes = models.recipe(args.model).scenes
    cmap = fit_mod.resolve_class_map(base)
    clips, stats = data_mod.load_clips(base.data, short=base.short, num_labels=cmap.num_labels)
    rows = []
    for f in sorted(args.fractions):
        for seed in args.seeds:
            epochs = args.epochs if scenes or f >= 1 else int(math.ceil(args.epochs / f))
            cfg = replace(base, out=str(out / f"{args.model}-f{f:g}-s{seed}"), train_fraction=f, seed=seed,
                          epochs=epochs)
            rows.append(run_one(cfg, clips, stats))
            print(json.dumps(rows[-1]), flush=True)
    summary = summarise(rows)
    print(f"\n{args.model}, {len(args.seeds)} seed(s) per share, validation side of the grouped split:")
    print("| share of training videos | training clips | clip mAP | clip top-1 | per-second F1 (L=1) | per-second mAP |")
    print("|---|---|---|---|---|---|")
    for s in summary:
        def cell(k: str, pct: bool = False) -> str:
            if k not in s:
                return "—"
            v, d = (100 * s[k], 100 * s[k + "_spread"]) if pct else (s[k], s[k + "_spread"])
            return f"{v:.1f} % (±{d / 2:.1f})" if pct else f"{v:.3f} (±{d / 2:.3f})"
        print(f"| {s['fraction']:g} | {s['train_clips']:,} | {cell('mAP')} | {cell('top1', True)} | "
              f"{cell('seconds_f1')} | {cell('seconds_mAP')} |")
    classes = list(summary[0]["per_class_ap"])
    print("\nclip AP per class (mean over seeds):")
    print("| share | " + " | ".join(classes) + " |")
    print("|---|" + "---|" * len(classes))
    for s in summary:
        print(f"| {s['fraction']:g} | " + " | ".join(f"{s['per_class_ap'][c]:.3f}" for c in classes) + " |")
    gains = {k: per_doubling(summary, k) for k in ("mAP", "top1", "seconds_f1", "seconds_mAP")}
    print("gain per doubling of the data (last two shares): "
          + ", ".join(f"{k} {v:+.4f}" for k, v in gains.items() if v is not None))
    (out / "curve.json").write_text(json.dumps({"rows": rows, "summary": summary, "per_doubling": gains}, indent=2) + "\n")
    targets = {}
    for t in args.target:
        key, _, value = t.partition("=")
        try:
            targets[key] = float(value)
        except ValueError:
            ap.error(f"--target wants KEY=VALUE with a number, e.g. mAP=0.80; got {t!r}")
    seeds = "1 seed" if len(args.seeds) == 1 else f"{len(args.seeds)} seeds per share; bars: their spread"
    plot(out / "curve.png", summary, f"{args.model}: more training clips, same validation clips ({seeds})", targets)
    print(out / "curve.png")


if __name__ == "__main__":
    main()
