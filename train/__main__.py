"""``audiocap-train``: fit | evaluate | export | experiments | timeline | export-vggish.

Logs and training progress go to stderr; ``evaluate`` and ``timeline`` print
exactly one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

_LOGGER = logging.getLogger(__name__)


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels-csv", help="class_labels_indices.csv (default: found near --data)")
    p.add_argument("--ontology", help="ontology.json (default: found near --data)")
    p.add_argument("--mapping", choices=("ontology", "direct"), default="ontology",
                   help="classes cover their ontology descendants (default) or only their own label (the paper)")
    p.add_argument("--short", choices=("skip", "pad"), default="skip",
                   help="clips with fewer than 10 frames: skip (default) or pad by repeating the clip")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default when it has one worth showing (not None, a flag's or an empty string)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.default in (None, "", argparse.SUPPRESS) or isinstance(action.default, bool)
                or "%(default)" in text or not action.option_strings):
            return text
        return text + " (default: %(default)s)"


def _parser() -> argparse.ArgumentParser:
    from train import fit as fit_mod
    from train import models
    from train import strong
    from train.timeline import URGENT_MAX_FALSE_ALARMS_PER_HOUR

    fmt = _HelpFormatter
    ap = argparse.ArgumentParser(
        prog="audiocap-train", formatter_class=fmt,
        description="Train, evaluate and export audiocap's classifier bundles; measure the caption timeline. "
                    "Logs and progress go to stderr, results (JSON, paths) to stdout.")
    ap.add_argument("--debug", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = fit_mod.FitConfig(data=[], out="")
    f = sub.add_parser("fit", formatter_class=fmt, help="train a classifier and write a run directory")
    f.add_argument("--data", required=True, nargs="+", help="tfrecord directory, glob or files")
    f.add_argument("--out", required=True, help="run directory to write")
    f.add_argument("--model", choices=models.MODEL_NAMES, default=d.model,
                   help="; ".join(f"{k}: {r.summary}" for k, r in models.RECIPES.items()))
    _add_data_options(f)
    f.add_argument("--classes", default="", metavar="FILE",
                   help="class set: a TOML file or a shipped set's name (four, home); default: the four classes")
    f.add_argument("--positives-only", action="store_true", help="drop clips with none of the four (the paper)")
    f.add_argument("--split", choices=fit_mod.SPLITS, default=d.split,
                   help="grouped by video_id (leak-free, default) or random after oversampling (the paper)")
    f.add_argument("--val-fraction", type=float, default=d.val_fraction)
    f.add_argument("--train-fraction", type=float, default=d.train_fraction,
                   help="grouped split: train on this share of the training videos only (nested subsets, "
                        "for learning curves); validation is unchanged")
    f.add_argument("--oversample", choices=fit_mod.OVERSAMPLING, default=d.oversample,
                   help="permute: the paper's permuted copies of rare-class clips")
    f.add_argument("--class-weights", action="store_true", help="weight clips by their rarest class")
    f.add_argument("--loss", choices=models.LOSSES, default=d.loss)
    f.add_argument("--no-normalise", dest="normalise", action="store_false", help="paper models: feed 0..255")
    f.add_argument("--no-last-pool", dest="last_pool", action="store_false", help="paper CNN: drop the third pooling")
    f.add_argument("--hidden", type=int, default=d.hidden)
    f.add_argument("--dropout", type=float, default=d.dropout)
    f.add_argument("--aux-weight", type=float, default=d.aux_weight,
                   help="models with the 527-label auxiliary head: its loss weight (0: none)")
    f.add_argument("--ensemble", type=int, default=d.ensemble, help="average N seeded models")
    f.add_argument("--members", default=d.members,
                   help="mixed ensemble, e.g. attention_mil*2,mean_mlp*2 (overrides --model/--ensemble)")
    f.add_argument("--epochs", type=int, default=d.epochs)
    f.add_argument("--batch-size", type=int, default=d.batch_size)
    f.add_argument("--learning-rate", type=float, default=d.learning_rate)
    f.add_argument("--seed", type=int, default=d.seed)
    f.add_argument("--strategy", choices=fit_mod.STRATEGIES, default=d.strategy,
                   help="tf.distribute: mirrored (local devices) or multiworker (TF_CONFIG)")
    f.add_argument("--last-epoch", dest="select_best", action="store_false",
                   help="keep the last epoch instead of the best validation mAP")
    f.add_argument("--stream", action="store_true",
                   help="stream the training side from disk each epoch (for the unbalanced split); "
                        "only the validation side is held in memory")
    f.add_argument("--lookahead", type=int, default=d.lookahead,
                   help="scene-trained models: the look-ahead L whose per-second validation F1 picks the epoch")
    f.add_argument("--scene-windows", type=int, default=d.scene_windows,
                   help="scene-trained models: windows cut from fresh training streams per epoch")
    f.add_argument("--young-share", type=float, default=d.young_share,
                   help="scene-trained models: share of windows where the stream starts inside the window")
    f.add_argument("--mixed-scenes", dest="mixed_scenes", action=argparse.BooleanOptionalAction, default=d.mixed_scenes,
                   help="scene-trained models: clips with several classes join the scenes of their rarest class "
                        "(default: only for class sets beyond the four)")
    f.add_argument("--edge-weight", type=float, default=d.edge_weight,
                   help="scene-trained models: per-second loss weight of the last two positions")
    f.add_argument("--quiet", action="store_true", help="no progress bar")

    e = sub.add_parser("evaluate", formatter_class=fmt,
                       help="metrics of a bundle on tfrecords (one JSON object on stdout)")
    e.add_argument("--model", help="bundle directory (default: the shipped bundle)")
    e.add_argument("--data", required=True, nargs="+", help="tfrecord directory, glob or files")
    e.add_argument("--runtime", choices=("auto", "litert", "keras"), default="keras")
    e.add_argument("--split", choices=("all", "val", "train"), default="all",
                   help="only the clips of the grouped validation (or training) split")
    e.add_argument("--val-fraction", type=float, default=d.val_fraction)
    e.add_argument("--short", choices=("skip", "pad"), default=None,
                   help="short clips: skip or pad (default: as the bundle was trained)")
    e.add_argument("--baseline", action="store_true",
                   help="with --split val: also fit the reference model (logistic regression per class on mean+max "
                        "pooled embeddings) on the training side and print its per-class AP")

    x = sub.add_parser("export", formatter_class=fmt, help="write a model bundle from a run directory")
    x.add_argument("--run", required=True, help="run directory written by fit")
    x.add_argument("--out", required=True, help="bundle directory to write")
    x.add_argument("--name", default="audiocap-classifier")
    x.add_argument("--version", default="1")
    x.add_argument("--no-seconds", dest="seconds", action="store_false", help="leave out the per-second model")
    x.add_argument("--window-from", metavar="BUNDLE",
                   help="take the window model (model.keras/.tflite, thresholds, metrics) from this bundle "
                        "and only the per-second model from the run")
    x.add_argument("--seconds-from", metavar="BUNDLE",
                   help="take the per-second model (seconds.keras/.tflite and its validation) from this bundle "
                        "and only the window model from the run")

    g = sub.add_parser("experiments", formatter_class=fmt, help="rerun the paper's grid, leak-free and leaky")
    g.add_argument("--data", required=True, nargs="+")
    g.add_argument("--out", required=True, help="directory for results.json, the table and the chart")
    g.add_argument("--epochs", type=int, default=3)
    g.add_argument("--limit", type=int, default=0, help="use only this many settings (0: all)")
    g.add_argument("--protocols", nargs="+", default=["grouped", "paper"], choices=("grouped", "paper"))
    g.add_argument("--markdown", help="also write the table into this markdown file (between markers)")
    g.add_argument("--full", action="store_true", help="the full factorial grid (36 settings) instead of one factor at a time")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--summarize-only", action="store_true",
                   help="train nothing: rebuild results, table and chart from the runs in OUT/runs")
    _add_data_options(g)
    g.set_defaults(mapping="direct")

    t = sub.add_parser("timeline", formatter_class=fmt,
                       help="caption timeline: how captions follow the sound (one JSON object on stdout)")
    t.add_argument("--model", help="bundle directory (default: the shipped bundle)")
    t.add_argument("--data", nargs="+", help="tfrecord directory, glob or files (bal_train): the curated stream")
    t.add_argument("--strong", metavar="DIR",
                   help="instead: natural streams of strong-labelled clips (strong_dev.tfrecord, strong_labels.tsv), "
                        "scored against their strong labels with sed_eval and sed_scores_eval")
    t.add_argument("--folds", type=int, default=5,
                   help="--strong: folds by video_id, each its own stream; --calibrate fits on the others")
    t.add_argument("--half", choices=("report", "calibration", "all"), default="report",
                   help="which half of the grouped validation split's videos to stream (default: report)")
    t.add_argument("--seed", type=int, default=0, help="stream seed")
    t.add_argument("--png", help="write a picture of the first minutes of the stream here")
    t.add_argument("--calibrate", action="store_true",
                   help="first calibrate the bundle's per-second tracker on the calibration half (writes metadata.json)")
    t.add_argument("--lookahead", type=float, default=None, help="seconds of look-ahead to calibrate for (0.96)")
    t.add_argument("--max-false-alarms", type=float, default=None,
                   help="calibration: cap on the share of captions that are false alarms (default: none, best F1)")
    t.add_argument("--urgent-false-alarms-per-hour", type=float, default=URGENT_MAX_FALSE_ALARMS_PER_HOUR,
                   help="calibration: most false-alarm captions per hour of stream an urgent class may give "
                        f"(default {URGENT_MAX_FALSE_ALARMS_PER_HOUR:g})")
    t.add_argument("--runtime", choices=("auto", "litert", "keras"), default="auto")
    t.add_argument("--write-tfrecords", metavar="DIR",
                   help="also write the stream as tfrecords, to replay it: audiocapd --source replay:DIR")

    s = sub.add_parser("fit-strong", formatter_class=fmt,
                       help="fine-tune a bundle's per-second model and calibrate its tracker on strong labels, "
                            "cross-validated (one JSON object on stdout)")
    s.add_argument("--model", help="bundle to start from (default: the shipped bundle)")
    s.add_argument("--strong", required=True, metavar="DIR", help="strong_dev folder")
    s.add_argument("--data", required=True, nargs="+", help="bal_train tfrecords: weak windows beside the strong")
    s.add_argument("--out", required=True, help="bundle directory to write")
    s.add_argument("--version", required=True, help="the new bundle's version")
    s.add_argument("--folds", type=int, default=5)
    s.add_argument("--epochs", type=int, default=8, help="fine-tuning epochs")
    s.add_argument("--weak-share", type=float, default=strong.FINETUNE_WEAK_SHARE,
                   help="weak windows per strong window in each epoch")
    s.add_argument("--max-false-alarms", type=float, default=None,
                   help="calibration: cap on the share of captions that are false alarms")
    s.add_argument("--curated", action="store_true",
                   help="calibrate on the curated calibration streams too, not on the strong streams alone")
    s.add_argument("--members", type=int, default=1,
                   help="per-second models fine-tuned with different seeds, their scores averaged in one model")
    s.add_argument("--weak-per-second", dest="weak_pooled", action="store_false",
                   help="weak windows are scenes whose every second carries its clip's labels (0.6's recipe), "
                        "not whole clips judged by their pooled seconds")

    v = sub.add_parser("export-vggish", formatter_class=fmt,
                       help="export VGGish to TFLite (float32, int8) and a SavedModel")
    v.add_argument("--source", required=True, help="VGGish checkpoint, SavedModel dir or TF-Hub handle")
    v.add_argument("--out", required=True, help="output directory")
    v.add_argument("--no-savedmodel", dest="savedmodel", action="store_false")
    v.add_argument("--quantization", action="append", choices=("float32", "int8", "int8-full"),
                   help="a file to write (repeat; default: float32 and int8). int8: dynamic range, the edge "
                        "default; int8-full: full integer, activation ranges from a synthetic set plus --calibration-audio")
    v.add_argument("--calibration-audio", action="append", default=[], metavar="WAV",
                   help="recordings like those the box will hear, to calibrate int8-full (repeat)")
    for p in (ap, *sub.choices.values()):
        for action in p._actions:  # options without a help text still show their default
            if (action.help is None and action.option_strings and action.default not in (None, "")
                    and not isinstance(action.default, bool)):
                action.help = "default: %(default)s"
    return ap


def _cmd_fit(args: argparse.Namespace) -> int:
    from train.fit import FitConfig, fit

    cfg = FitConfig(
        data=args.data, out=args.out, model=args.model, classes=args.classes, labels_csv=args.labels_csv, ontology=args.ontology,
        mapping=args.mapping, positives_only=args.positives_only, short=args.short, split=args.split,
        val_fraction=args.val_fraction, train_fraction=args.train_fraction, oversample=args.oversample,
        class_weights=args.class_weights, loss=args.loss, normalise=args.normalise, last_pool=args.last_pool, hidden=args.hidden,
        dropout=args.dropout, aux_weight=args.aux_weight, ensemble=args.ensemble, members=args.members, epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed, strategy=args.strategy,
        select_best=args.select_best, stream=args.stream,
        # A progress bar on a terminal; one line per epoch when stderr is a file.
        verbose=0 if args.quiet else (1 if sys.stderr.isatty() else 2),
        lookahead=args.lookahead, scene_windows=args.scene_windows, young_share=args.young_share,
        edge_weight=args.edge_weight, mixed_scenes=args.mixed_scenes,
        extra={"command": " ".join(["audiocap-train", *sys.argv[1:]])},
    )
    with contextlib.redirect_stdout(sys.stderr):  # Keras prints progress on stdout; stdout is for the result
        run = fit(cfg)
    print(run)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from train.evaluate import evaluate_bundle

    result = evaluate_bundle(args.model, args.data, runtime=args.runtime, split=args.split,
                             val_fraction=args.val_fraction, short=args.short, baseline=args.baseline)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from train.export import export_run

    print(export_run(args.run, args.out, name=args.name, version=args.version, seconds=args.seconds,
                     window_from=args.window_from, seconds_from=args.seconds_from))
    return 0


def _cmd_experiments(args: argparse.Namespace) -> int:
    from train.experiments import run_grid

    run_grid(args.data, args.out, epochs=args.epochs, limit=args.limit, protocols=args.protocols,
             labels_csv=args.labels_csv, ontology=args.ontology, mapping=args.mapping, short=args.short,
             markdown=args.markdown, full=args.full, seed=args.seed, summarize_only=args.summarize_only)
    return 0


def _cmd_timeline(args: argparse.Namespace) -> int:
    from train.timeline import evaluate_timeline

    if args.strong:
        from train.strong import evaluate_strong

        result = evaluate_strong(args.model, args.strong, folds=args.folds, seed=args.seed, png=args.png,
                                 calibrate_bundle=args.calibrate, runtime=args.runtime, lookahead_s=args.lookahead,
                                 max_false_alarms=args.max_false_alarms,
                                 urgent_max_false_alarms_per_hour=args.urgent_false_alarms_per_hour)
        sys.stdout.write(json.dumps(result) + "\n")
        return 0
    if not args.data:
        raise ValueError("timeline needs --data (bal_train tfrecords, the curated stream) or --strong DIR")
    result = evaluate_timeline(args.model, args.data, seed=args.seed, half=args.half, png=args.png,
                               calibrate_bundle=args.calibrate, lookahead_s=args.lookahead, runtime=args.runtime,
                               write_tfrecords=args.write_tfrecords, max_false_alarms=args.max_false_alarms,
                               urgent_max_false_alarms_per_hour=args.urgent_false_alarms_per_hour)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


def _cmd_fit_strong(args: argparse.Namespace) -> int:
    from train.strong import fit_strong

    with contextlib.redirect_stdout(sys.stderr):
        result = fit_strong(args.model, args.strong, args.data, args.out, args.version, folds=args.folds,
                            epochs=args.epochs, weak_share=args.weak_share, max_false_alarms=args.max_false_alarms,
                            curated=args.curated, members=args.members,
                            weak_pooled=args.weak_pooled)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


def _cmd_export_vggish(args: argparse.Namespace) -> int:
    from pipeline.vggish import export_savedmodel, export_tflite, load_vggish

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_vggish(args.source)
    calibration = None
    if "int8-full" in (args.quantization or ()):
        import soundfile

        from pipeline import audio, params
        from pipeline.vggish import calibration_examples

        recordings = []
        for wav in args.calibration_audio:
            x, rate = soundfile.read(wav, dtype="float32", always_2d=True)
            recordings.append(audio.resample(audio.condition(x), rate, params.SAMPLE_RATE))
        calibration = calibration_examples(tuple(recordings))
    names = {"float32": "vggish_f32", "int8": "vggish_int8", "int8-full": "vggish_int8_full"}
    for quant in args.quantization or ("float32", "int8"):
        path = export_tflite(model, out / f"{names[quant]}.tflite", quant, calibration=calibration)
        _LOGGER.info("wrote %s (%.1f MB)", path, path.stat().st_size / 1e6)
        print(path)
    if args.savedmodel:
        print(export_savedmodel(model, out / "vggish_savedmodel"))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``audiocap-train`` console script."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("matplotlib", "PIL", "absl", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from pipeline.quiet import import_tensorflow

    # Every command needs it; imported here without its native chatter. A
    # multi-worker fit configures the runtime before starting it (collective ops).
    import_tensorflow(start_runtime=getattr(args, "strategy", "none") != "multiworker")
    handlers = {
        "fit": _cmd_fit,
        "evaluate": _cmd_evaluate,
        "export": _cmd_export,
        "experiments": _cmd_experiments,
        "export-vggish": _cmd_export_vggish,
        "timeline": _cmd_timeline,
        "fit-strong": _cmd_fit_strong,
    }
    try:
        return handlers[args.command](args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        if args.debug:
            raise
        _LOGGER.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
