"""Training: data -> split -> model -> run directory.

A run directory holds ``config.json``, ``history.json``, ``metrics.json``
(validation metrics at calibrated thresholds), ``model.keras`` (the window
classifier, uint8 ``[B,10,128]`` -> ``[B,4]``), ``seconds.keras`` when the
model scores seconds, ``val_scores.npz`` and the plots
(``learning_curves.png``, ``pr_curves.png``, ``confusion.png``).
``audiocap-train export --run DIR`` turns it into a bundle.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt

from pipeline import params
from pipeline.classset import SHIPPED_DIR, load_class_set
from pipeline.labels import ClassMap, build_class_map, find_audioset_metadata
from train import data as data_mod
from train import evaluate as ev
from train import models
from train import scenes

_LOGGER = logging.getLogger(__name__)

SPLITS = ("grouped", "random")
OVERSAMPLING = ("none", "permute")
STRATEGIES = ("none", "mirrored", "multiworker")
TRAIN_SUBSET_SALT = "audiocap-train-subset"
"""Salt of the video hash that picks ``train_fraction``'s videos (not the split's, so the subset is its own draw)."""


@dataclass
class FitConfig:
    """Everything a training run depends on (saved as the run's ``config.json``)."""

    data: list[str]
    """tfrecord directories, globs or files."""
    out: str
    """The run directory to write."""
    model: str = "attention_mil"
    """One of ``models.MODEL_NAMES`` (its recipe in ``models.RECIPES`` says how it trains)."""
    classes: str = ""
    """A class-set TOML file or a shipped set's name (``home``); empty: the four classes."""
    labels_csv: str | None = None
    """``class_labels_indices.csv``; found near the data when omitted."""
    ontology: str | None = None
    """``ontology.json``; found near the data when omitted."""
    mapping: str = "ontology"
    """``ontology`` (classes cover descendants) or ``direct`` (the paper)."""
    positives_only: bool = False
    """Drop clips with none of the four classes (the paper); default keeps them as negatives."""
    short: str = "skip"
    """Clips with fewer than 10 frames: ``skip`` or ``pad``."""
    split: str = "grouped"
    """``grouped`` by video_id (leak-free) or ``random`` (the paper, after oversampling)."""
    val_fraction: float = 0.2
    train_fraction: float = 1.0
    """Grouped split: train on this share of the training side's videos only
    (chosen by a hash of the video id, so a smaller share's videos are all in
    every larger one); the validation side is unchanged. For learning curves:
    how much would more data help?"""
    oversample: str = "none"
    """``permute``: the paper's permuted copies of rare-class clips."""
    class_weights: bool = False
    """Weight positives per class by n_neg / n_pos (binary loss only)."""
    loss: str = "binary"
    normalise: bool = True
    """Paper models: divide by 255 (the paper's normalisation)."""
    last_pool: bool = True
    """Paper CNN: keep the optional third pooling."""
    hidden: int = 512
    dropout: float = 0.3
    aux_weight: float = 1.0
    """Models with the 527-label auxiliary head: its loss weight (0 drops the head)."""
    ensemble: int = 1
    """Average this many independently seeded models of ``model``."""
    members: str = ""
    """Ensemble of mixed models, e.g. ``attention_mil*2,mean_mlp*2`` (overrides model/ensemble)."""
    epochs: int = 4
    batch_size: int = 128
    learning_rate: float = 1e-3
    seed: int = 0
    strategy: str = "none"
    """``mirrored`` (local devices) or ``multiworker`` (TF_CONFIG)."""
    select_best: bool = True
    """Keep the epoch with the best validation mAP (else the last)."""
    stream: bool = False
    """Stream the training side from the tfrecords each epoch instead of
    loading the data into memory (for the unbalanced split); only the
    validation side is held in memory."""
    stream_sample: int = 20000
    """Training clips read up front for the input statistics (stream mode)."""
    lookahead: int = 1
    """Scene-trained models: the look-ahead L (embeddings) whose per-second
    validation F1 selects the epoch (the daemon's default is 1)."""
    scene_windows: int = 40000
    """Scene-trained models: windows cut from fresh training streams per epoch
    (on top of one pass over the aligned training clips)."""
    young_share: float = 0.1
    """Scene-trained models: share of those windows that are young (the
    stream started inside them; left-padded with the first embedding)."""
    mixed_scenes: bool | None = None
    """Scene-trained models: clips with several of the classes join the scenes
    of their rarest class (``scenes.build_stream(mixed=True)``); ``None``:
    only for class sets beyond the default four, whose rare classes (a knock,
    a baby) mostly come with other sounds."""
    edge_weight: float = 2.0
    """Scene-trained models: weight of the per-second loss at the last two
    positions (look-ahead 1 and 0) relative to the others."""
    verbose: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def member_models(self) -> list[str]:
        """The model name of every ensemble member, in training order."""
        if not self.members.strip():
            return [self.model] * self.ensemble
        out = []
        for part in self.members.split(","):
            name, _, count = part.strip().partition("*")
            try:
                n = int(count) if count else 1
            except ValueError:
                n = 0
            out.extend([name] * n if n > 0 else ["<bad count>"])
        return out

    def validate(self) -> None:
        """Raises ValueError naming the bad option."""
        known = self.model in models.MODEL_NAMES
        rec = models.recipe(self.model) if known else None
        scenes = any(m in models.MODEL_NAMES and models.recipe(m).scenes for m in self.member_models())
        checks = [
            (known, f"model must be one of {models.MODEL_NAMES}"),
            (self.loss in models.LOSSES, f"loss must be one of {models.LOSSES}"),
            (self.split in SPLITS, f"split must be one of {SPLITS}"),
            (self.oversample in OVERSAMPLING, f"oversample must be one of {OVERSAMPLING}"),
            (self.strategy in STRATEGIES, f"strategy must be one of {STRATEGIES}"),
            (self.short in data_mod.SHORT_POLICIES, f"short must be one of {data_mod.SHORT_POLICIES}"),
            (0 < self.val_fraction < 1, "val_fraction must be in (0, 1)"),
            (0 < self.train_fraction <= 1, "train_fraction must be in (0, 1]"),
            (self.train_fraction == 1 or (self.split == "grouped" and not self.stream),
             "train_fraction below 1 needs the grouped split, without --stream"),
            (self.epochs >= 1 and self.batch_size >= 1, "epochs and batch_size must be >= 1"),
            (self.ensemble >= 1, "ensemble must be >= 1"),
            (all(m in models.MODEL_NAMES for m in self.member_models()),
             f"members must be model names from {models.MODEL_NAMES}, e.g. attention_mil*2,mean_mlp*2"),
            (self.loss == "binary" or self.positives_only,
             "categorical/sparse losses need --positives-only (softmax cannot say 'none of the four')"),
            (rec is None or self.loss in rec.losses, f"model {self.model} takes only the losses {rec and rec.losses}"),
            (not scenes or (self.split == "grouped" and self.oversample == "none" and not self.positives_only
                            and not self.stream and self.strategy == "none"),
             "scene-trained models (e.g. stream_gru) build their streams from the grouped split's training side: "
             "no random split, oversampling, positives-only, --stream or distribution strategy"),
            (0 <= self.lookahead < params.WINDOW_EMBEDDINGS, f"lookahead must be in 0..{params.WINDOW_EMBEDDINGS - 1}"),
            (self.scene_windows >= 1 and 0 <= self.young_share <= 1 and self.edge_weight > 0,
             "scene_windows >= 1, young_share in [0, 1], edge_weight > 0"),
            (not self.stream or (self.split == "grouped" and self.oversample == "none" and not self.class_weights
                                 and not self.positives_only and self.strategy == "none" and self.loss == "binary"),
             "--stream trains on the grouped split's training side as it comes: no oversampling, class weights, "
             "positives-only, softmax losses or distribution strategy"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"{msg} (model={self.model!r}, loss={self.loss!r}, split={self.split!r}, "
                                 f"oversample={self.oversample!r}, strategy={self.strategy!r}, short={self.short!r})")


@dataclass
class Prepared:
    """Split data ready for training."""

    x_train: npt.NDArray[np.uint8]
    y_train: npt.NDArray[np.float32]
    aux_train: npt.NDArray[np.uint8]
    x_val: npt.NDArray[np.uint8]
    y_val: npt.NDArray[np.float32]
    summary: dict[str, Any]
    val_seen: npt.NDArray[np.bool_] | None = None
    """Per validation row: its video (the clip or a permuted copy) is also in training."""
    train_stream: Any = None
    """Stream mode: ``f(aux_labels: bool) -> tf.data.Dataset`` of the training side
    (``x_train``/``y_train`` then hold only a sample, for input statistics)."""
    frames_train: npt.NDArray[np.int32] | None = None
    """Frames each training row really has (scene-trained models play only those)."""
    frames_val: npt.NDArray[np.int32] | None = None


def _class_set_info(cfg: FitConfig) -> dict[str, str]:
    """What the bundle records of its class set: its name and the file it came from."""
    if not cfg.classes:
        return {"name": "four", "file": "(built in: pipeline.labels.CLASS_MIDS)"}
    cs = load_class_set(cfg.classes)
    path = Path(cs.path).resolve()
    shipped = path.parent == SHIPPED_DIR
    return {"name": cs.name, "file": f"pipeline/classsets/{path.name}" if shipped else str(path)}


def resolve_class_map(cfg: FitConfig) -> ClassMap:
    """The class map from the config's label files (or those near the data)."""
    csv_path, onto = (cfg.labels_csv, cfg.ontology)
    if csv_path is None or (onto is None and cfg.mapping == "ontology"):
        found_csv, found_onto = find_audioset_metadata(data_mod.list_files(cfg.data)[0])
        csv_path = csv_path or str(found_csv)
        onto = onto or (str(found_onto) if found_onto else None)
    if cfg.classes:
        return load_class_set(cfg.classes).class_map(csv_path, onto, cfg.mapping)
    return build_class_map(csv_path, onto, cfg.mapping)


def prepare(cfg: FitConfig, clips: data_mod.Clips, class_map: ClassMap, stats: data_mod.IngestStats | None = None) -> Prepared:
    """Targets, positives-only filter, split and oversampling, as the config says.

    The paper's protocol (``split="random"`` with ``oversample="permute"``)
    oversamples BEFORE splitting, so permuted copies of one clip land on both
    sides; the grouped split oversamples the training side only.
    """
    y = clips.targets(class_map).astype(np.float32)
    keep = np.arange(len(clips))
    if cfg.positives_only:
        keep = np.flatnonzero(y.sum(axis=1) > 0)
    x, y, aux, vids, frames = clips.x[keep], y[keep], clips.labels[keep], clips.video_id[keep], clips.frames[keep]
    rng_seed = cfg.seed
    if cfg.split == "random":
        if cfg.oversample == "permute":
            x, y, src = data_mod.permutation_oversample(x, y, seed=rng_seed)
            aux, vids, frames = aux[src], vids[src], frames[src]
        tr, va = data_mod.random_split(len(x), cfg.val_fraction, seed=rng_seed)
        x_tr, y_tr, aux_tr, f_tr = x[tr], y[tr], aux[tr], frames[tr]
    else:
        tr, va = data_mod.grouped_split(vids, cfg.val_fraction)
        if cfg.train_fraction < 1:
            tr = tr[data_mod.validation_mask(vids[tr], cfg.train_fraction, salt=TRAIN_SUBSET_SALT)]
        x_tr, y_tr, aux_tr, f_tr = x[tr], y[tr], aux[tr], frames[tr]
        if cfg.oversample == "permute":
            x_tr, y_tr, src = data_mod.permutation_oversample(x_tr, y_tr, seed=rng_seed)
            aux_tr, f_tr = aux_tr[src], f_tr[src]
    train_videos = set(vids[tr])
    val_seen = np.array([v in train_videos for v in vids[va]], dtype=bool)
    leaked = len(train_videos & set(vids[va]))
    summary = {
        "clips_read": len(clips),
        "clips_used": int(len(keep)),
        "train_rows": int(len(x_tr)),
        "train_fraction": cfg.train_fraction,
        "train_videos": len(train_videos),
        "val_rows": int(len(va)),
        "videos_on_both_sides": int(leaked),
        "train_positives": {n: int(v) for n, v in zip(class_map.names, y_tr.sum(axis=0))},
        "val_positives": {n: int(v) for n, v in zip(class_map.names, y[va].sum(axis=0))},
        "val_negatives": int(np.sum(y[va].sum(axis=1) == 0)),
        "ingest": stats.as_dict() if stats else None,
    }
    _LOGGER.info(
        "split %s: %d train rows, %d validation clips (%d videos on both sides)",
        cfg.split, len(x_tr), len(va), leaked,
    )
    summary["val_rows_seen_in_training"] = int(val_seen.sum())
    return Prepared(x_tr, y_tr, aux_tr, x[va], y[va], summary, val_seen,
                    frames_train=f_tr.astype(np.int32), frames_val=frames[va].astype(np.int32))


def prepare_stream(cfg: FitConfig, class_map: ClassMap) -> Prepared:
    """Stream mode: the validation side in memory, the training side as a pipeline."""
    import itertools

    stats = data_mod.IngestStats()
    val, _ = data_mod.load_clips(cfg.data, short=cfg.short, num_labels=class_map.num_labels, stats=stats,
                                 only_val=cfg.val_fraction)
    if len(val) == 0:
        raise data_mod.DataError(f"no validation clips in {cfg.data} (val_fraction {cfg.val_fraction})")

    def stream(aux: bool) -> Any:
        return data_mod.make_dataset(cfg.data, class_map, batch_size=cfg.batch_size, short=cfg.short,
                                     aux_labels=aux, seed=cfg.seed, exclude_val=cfg.val_fraction)

    n_batches = max(1, cfg.stream_sample // cfg.batch_size)
    xs, ys = [], []
    for x, y in itertools.islice(stream(False).as_numpy_iterator(), n_batches):
        xs.append(x)
        ys.append(y)
    if not xs:
        raise data_mod.DataError(f"no training clips in {cfg.data} (val_fraction {cfg.val_fraction})")
    x_s, y_s = np.concatenate(xs), np.concatenate(ys).astype(np.float32)
    summary = {
        "streamed": True,
        "train_rows": "streamed (training side of the grouped split)",
        "train_sample_for_statistics": int(len(x_s)),
        "val_rows": int(len(val)),
        "videos_on_both_sides": 0,
        "val_positives": {n: int(v) for n, v in zip(class_map.names, val.targets(class_map).sum(axis=0))},
        "ingest_validation_pass": stats.as_dict(),
    }
    _LOGGER.info("stream mode: %d validation clips in memory; training side streamed", len(val))
    return Prepared(x_s, y_s, np.zeros((len(x_s), 0), np.uint8), val.x, val.targets(class_map).astype(np.float32),
                    summary, np.zeros(len(val), bool), stream)


def _strategy(name: str) -> Any:
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy multiworker needs TF_CONFIG (the cluster and this task's index)")
        from pipeline.quiet import native_stderr

        with native_stderr():  # it starts TensorFlow's runtime (audiocap-train left it unstarted)
            return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief() -> bool:
    """True unless TF_CONFIG names this process a non-chief worker."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return True
    task = json.loads(raw).get("task", {})
    cluster = json.loads(raw).get("cluster", {})
    if "chief" in cluster:
        return task.get("type") == "chief"
    return task.get("type", "worker") == "worker" and int(task.get("index", 0)) == 0


def _hyper(cfg: FitConfig, x_train: npt.NDArray[np.uint8]) -> models.Hyper:
    rec = models.recipe(cfg.model)
    mean, var = models.input_statistics(x_train) if rec.input_stats else (None, None)
    return models.Hyper(loss=cfg.loss, normalise=cfg.normalise, last_pool=cfg.last_pool, hidden=cfg.hidden,
                        dropout=cfg.dropout, mean=mean, var=var)


def seconds_loss(edge_weight: float) -> Any:
    """Per-second binary cross-entropy, the last two positions weighted ``edge_weight``.

    Position 9 - L is what the daemon reads at look-ahead L; L = 0 and 1 weigh
    more so that the model does not trade them for the easier middle seconds.
    The weights are normalised to mean 1 (the loss stays on the BCE scale).
    """
    import keras
    from keras import ops

    w = np.ones(params.WINDOW_EMBEDDINGS, np.float32)
    w[-2:] = edge_weight
    w /= w.mean()

    def per_second_bce(y_true: Any, y_pred: Any) -> Any:
        return ops.mean(keras.losses.binary_crossentropy(y_true, y_pred) * ops.convert_to_tensor(w), axis=-1)

    return per_second_bce


def _losses(cfg: FitConfig) -> tuple[dict[str, Any], dict[str, float]]:
    """``({output: loss}, {output: weight})`` of a dict-output model's recipe."""
    trained = models.recipe(cfg.model).trained_outputs(cfg.aux_weight)
    losses = {k: seconds_loss(cfg.edge_weight) if k == "seconds" else "binary_crossentropy" for k in trained}
    return losses, trained


def build_model(cfg: FitConfig, x_train: npt.NDArray[np.uint8], class_map: ClassMap, seed: int) -> Any:
    """The Keras training model for ``cfg`` (compiled), as its recipe says."""
    import keras

    keras.utils.set_random_seed(seed)
    rec = models.recipe(cfg.model)
    num_aux = class_map.num_labels if rec.aux and cfg.aux_weight > 0 else 0
    model = rec.build(len(class_map.names), num_aux, _hyper(cfg, x_train))
    optimizer = keras.optimizers.Adam(cfg.learning_rate)
    if rec.dict_outputs:
        losses, weights = _losses(cfg)
        model.compile(optimizer=optimizer, loss=losses, loss_weights=weights)
        return model
    loss = {"binary": "binary_crossentropy", "categorical": "categorical_crossentropy",
            "sparse": "sparse_categorical_crossentropy"}[cfg.loss]
    metrics = ["binary_accuracy"] if cfg.loss == "binary" else ["accuracy"]
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    return model


def training_targets(cfg: FitConfig, y: npt.NDArray[np.float32], aux: npt.NDArray[np.uint8]) -> Any:
    """Targets of aligned clips in the form the model's loss wants.

    Every embedding of a clip carries the clip's labels, so a per-second
    output's target is the clip target at every position.
    """
    rec = models.recipe(cfg.model)
    if rec.dict_outputs:
        trained = rec.trained_outputs(cfg.aux_weight)
        out: dict[str, Any] = {"classes": y}
        if "seconds" in trained:
            out["seconds"] = np.repeat(y[:, None, :], params.WINDOW_EMBEDDINGS, axis=1)
        if "audioset" in trained:
            out["audioset"] = aux.astype(np.float32)
        return out
    if cfg.loss == "categorical":
        return y / np.maximum(y.sum(axis=1, keepdims=True), 1.0)
    if cfg.loss == "sparse":
        return y.argmax(axis=1).astype(np.int32)  # first of the four present, in class order
    return y


def _window_scores(model: Any, x: npt.NDArray[np.uint8], batch: int = 1024) -> npt.NDArray[np.float32]:
    out = model.predict(x, batch_size=batch, verbose=0)
    if isinstance(out, dict):
        out = out["classes"]
    return np.asarray(out, dtype=np.float32)


class _BestByMAP:
    """Keras callback: validation mAP after each epoch; keeps the best weights."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        import keras

        class Callback(keras.callbacks.Callback):
            def __init__(self, x_val, y_val, select_best):
                super().__init__()
                self.x_val, self.y_val, self.select_best = x_val, y_val, select_best
                self.best, self.best_epoch, self.best_weights = -1.0, -1, None

            def on_epoch_end(self, epoch, logs=None):
                s = _window_scores(self.model, self.x_val)
                m = float(np.nanmean(ev.average_precisions(self.y_val, s)))
                top1, _ = ev.top1_accuracy(self.y_val, s)
                if logs is not None:
                    logs["val_map"] = m
                    logs["val_top1"] = top1
                    logs["val_binary_accuracy_paper"] = ev.binary_accuracy(self.y_val, s)
                _LOGGER.info("epoch %d: validation mAP %.4f top-1 %.4f", epoch + 1, m, top1)
                if m > self.best:
                    self.best, self.best_epoch = m, epoch + 1
                    if self.select_best:
                        self.best_weights = self.model.get_weights()

            def on_train_end(self, logs=None):
                if self.select_best and self.best_weights is not None:
                    self.model.set_weights(self.best_weights)

        return Callback(*args, **kwargs)


def train_one(cfg: FitConfig, prep: Prepared, class_map: ClassMap, seed: int, strategy: Any) -> tuple[Any, dict[str, list[float]], int]:
    """Trains one model; returns ``(model, history, best_epoch)``."""
    import tensorflow as tf

    with strategy.scope():
        model = build_model(cfg, prep.x_train, class_map, seed)
    targets = training_targets(cfg, prep.y_train, prep.aux_train)
    sample_weight = None
    if cfg.class_weights:
        # A clip weighs as much as its rarest class's n_neg / n_pos.
        w = data_mod.class_weights(prep.y_train)
        sample_weight = 1.0 + (prep.y_train * (w - 1.0)).max(axis=1)
    distributed = cfg.strategy != "none"
    callbacks = []
    best = None
    rec = models.recipe(cfg.model)
    if rec.scenes:
        return _scene_fit(cfg, model, prep, seed)
    if prep.train_stream is not None:
        aux = "audioset" in rec.trained_outputs(cfg.aux_weight)
        best = _BestByMAP(prep.x_val, prep.y_val, cfg.select_best)
        ds = prep.train_stream(aux)
        if rec.dict_outputs and not aux:
            ds = ds.map(lambda x, y: (x, {"classes": y}))
        hist = model.fit(ds, epochs=cfg.epochs, verbose=cfg.verbose, callbacks=[best], shuffle=False)
    elif not distributed:
        best = _BestByMAP(prep.x_val, prep.y_val, cfg.select_best)
        callbacks.append(best)
        hist = model.fit(
            prep.x_train, targets, sample_weight=sample_weight, batch_size=cfg.batch_size, epochs=cfg.epochs,
            shuffle=True, verbose=cfg.verbose, callbacks=callbacks,
        )
    else:
        # Under a strategy the data is a tf.data pipeline sharded by element
        # (every worker sees its share of each global batch).
        # The windows go in as float32 (same values): Keras all-reduces the
        # first batch to build the model, and collectives have no uint8.
        parts = (prep.x_train, targets) if sample_weight is None else (prep.x_train, targets, sample_weight)
        ds = tf.data.Dataset.from_tensor_slices(parts).shuffle(len(prep.x_train), seed=seed).batch(cfg.batch_size)
        ds = ds.map(lambda x, *rest: (tf.cast(x, tf.float32), *rest))
        opts = tf.data.Options()
        opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        history, best_epoch = _distributed_fit(cfg, model, ds.with_options(opts), strategy, sample_weight is not None,
                                               prep.x_val, prep.y_val)
        return model, history, best_epoch
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    return model, history, (best.best_epoch if best else cfg.epochs)


def mixed_scenes(cfg: FitConfig, y: npt.NDArray) -> bool:
    """Whether this run's scenes are mixed (:attr:`FitConfig.mixed_scenes`, resolved)."""
    return scenes.is_large_class_set(y.shape[1]) if cfg.mixed_scenes is None else bool(cfg.mixed_scenes)


def validation_stream(prep: Prepared) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """The per-second validation set: the daemon's rolling windows over one stream.

    The stream is ``scenes.build_stream(val_x, val_frames, val_y,
    default_rng(0))`` over the validation side (each clip once), scored as the
    daemon does: the window ending at every embedding, left-padded at the start.
    For a class set beyond the four it is mixed and exhausted, as the
    timeline's streams are (otherwise the rarest class would end it after a
    few scenes).

    Returns:
      ``(windows uint8 [T, 10, 128], labels uint8 [T, C])``.
    """
    if prep.frames_val is None:
        raise ValueError("per-second validation needs the validation clips' frame counts")
    many = scenes.is_large_class_set(prep.y_val.shape[1])
    stream = scenes.build_stream(prep.x_val, prep.frames_val, prep.y_val, np.random.default_rng(0), exhaust=many, mixed=many)
    t = len(stream)
    idx = rolling_windows(stream.embeddings, np.zeros(t, np.int64), np.arange(t))
    return stream.embeddings[idx], stream.labels


def seconds_validation(seconds: npt.NDArray[np.float32], labels: npt.NDArray, lookaheads: Sequence[int] = (0, 1)) -> dict[str, Any]:
    """:func:`per_second_metrics` at each look-ahead, keyed ``"L0"``, ``"L1"``, ..."""
    return {f"L{la}": per_second_metrics(seconds, labels, la) for la in lookaheads}


def _predict_outputs(model: Any, x: npt.NDArray[np.uint8], batch: int = 1024) -> dict[str, npt.NDArray[np.float32]]:
    out = model.predict(x, batch_size=batch, verbose=0)
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


def _scene_fit(cfg: FitConfig, model: Any, prep: Prepared, seed: int) -> tuple[Any, dict[str, list[float]], int]:
    """Trains a scene model: every epoch fresh training streams, one pass over the aligned clips.

    Each epoch draws ``cfg.scene_windows`` windows from a new seeded stream
    of training-side scenes (:func:`scene_windows`) and adds every aligned
    training clip (per-second target = the clip's labels), so the window
    output stays a clip tagger. After each epoch the per-second scores are
    measured on the validation stream (:func:`validation_stream`) at L = 0, 1
    and ``cfg.lookahead``, and the window output on the aligned validation
    clips; the epoch with the best per-second micro F1 at ``cfg.lookahead``
    is kept (``select_best``).
    """
    if prep.frames_train is None:
        raise ValueError(f"{cfg.model} trains on scenes and needs the clips in memory (not --stream)")
    rng = np.random.default_rng(seed)
    trained = models.recipe(cfg.model).trained_outputs(cfg.aux_weight)
    aux = prep.aux_train if "audioset" in trained else prep.aux_train[:, :0]
    clip_targets = training_targets(cfg, prep.y_train, prep.aux_train)
    val_x, val_labels = validation_stream(prep)
    lookaheads = sorted({0, 1, cfg.lookahead})
    history: dict[str, list[float]] = {}
    best, best_epoch, best_weights = -1.0, -1, None
    mixed = mixed_scenes(cfg, prep.y_train)
    for epoch in range(cfg.epochs):
        t0 = time.monotonic()
        wx, wt = scene_windows(prep.x_train, prep.frames_train, prep.y_train, aux, rng, cfg.scene_windows, cfg.young_share,
                               mixed=mixed)
        x = np.concatenate([wx, prep.x_train])
        y = {k: np.concatenate([wt[k], clip_targets[k]]) for k in trained}
        hist = model.fit(x, y, batch_size=cfg.batch_size, epochs=1, shuffle=True, verbose=cfg.verbose)
        sec = _predict_outputs(model, val_x)["seconds"]
        per_second = seconds_validation(sec, val_labels, lookaheads)
        clip = _window_scores(model, prep.x_val)
        row = {k: float(v[-1]) for k, v in hist.history.items()}
        for key, r in per_second.items():
            row[f"val_seconds_f1_{key}"] = r["micro_f1"]
            row[f"val_seconds_map_{key}"] = r["mAP"]
        row["val_map"] = float(np.nanmean(ev.average_precisions(prep.y_val, clip)))
        row["val_top1"] = ev.top1_accuracy(prep.y_val, clip)[0]
        for k, v in row.items():
            history.setdefault(k, []).append(v)
        score = row[f"val_seconds_f1_L{cfg.lookahead}"]
        _LOGGER.info(
            "epoch %d: per-second F1 %.4f mAP %.4f (L=%d), F1 %.4f (L=0); clip mAP %.4f top-1 %.4f (%.0f s)",
            epoch + 1, score, row[f"val_seconds_map_L{cfg.lookahead}"], cfg.lookahead, row["val_seconds_f1_L0"],
            row["val_map"], row["val_top1"], time.monotonic() - t0,
        )
        if score > best:
            best, best_epoch = score, epoch + 1
            if cfg.select_best:
                best_weights = model.get_weights()
    if best_weights is not None:
        model.set_weights(best_weights)
    return model, history, best_epoch if cfg.select_best else cfg.epochs


def _per_example_loss(cfg: FitConfig, y: Any, pred: Any) -> Any:
    """The compiled loss, per example ``[b]`` (for the custom distributed loop)."""
    import keras

    if isinstance(pred, dict):
        losses, weights = _losses(cfg)
        total = 0.0
        for k, fn in losses.items():
            fn = keras.losses.binary_crossentropy if isinstance(fn, str) else fn
            total = total + weights[k] * fn(y[k], pred[k])
        return total
    if cfg.loss == "categorical":
        return keras.losses.categorical_crossentropy(y, pred)
    if cfg.loss == "sparse":
        return keras.losses.sparse_categorical_crossentropy(y, pred)
    return keras.losses.binary_crossentropy(y, pred)


def _distributed_fit(
    cfg: FitConfig, model: Any, ds: Any, strategy: Any, weighted: bool,
    x_val: npt.NDArray[np.uint8], y_val: npt.NDArray[np.float32],
) -> tuple[dict[str, list[float]], int]:
    """A plain ``tf.distribute`` training loop (``strategy.run`` + all-reduce).

    Keras 3's ``fit`` under MultiWorkerMirroredStrategy fails in its own
    bookkeeping (it all-reduces the first batch and scalar logs along axes
    they do not have), so the distributed path trains with an explicit loop:
    each replica computes the loss of its share of the global batch, scaled by
    the global batch size, and the optimizer all-reduces the gradients.

    After each epoch every worker scores the validation clips with its copy
    of the (synchronised, hence identical) weights, so all workers agree on
    the best epoch; with ``select_best`` its weights are restored at the end,
    as single-worker ``fit`` does.

    Returns:
      ``(history, best epoch)``: loss, ``val_map`` and ``val_top1`` per epoch.
    """
    import keras
    import tensorflow as tf

    dist = strategy.experimental_distribute_dataset(ds)
    with strategy.scope():
        optimizer = keras.optimizers.Adam(cfg.learning_rate)
        optimizer.build(model.trainable_variables)

    def replica_step(x, y, w=None):
        with tf.GradientTape() as tape:
            pred = model(x, training=True)
            per_ex = _per_example_loss(cfg, y, pred)
            if w is not None:
                per_ex = per_ex * tf.cast(w, per_ex.dtype)
            loss = tf.nn.compute_average_loss(per_ex, global_batch_size=cfg.batch_size)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function
    def step(batch):
        return strategy.reduce("SUM", strategy.run(replica_step, args=batch), axis=None)

    history: dict[str, list[float]] = {"loss": [], "val_map": [], "val_top1": []}
    best, best_epoch, best_weights = -1.0, -1, None
    for epoch in range(cfg.epochs):
        total, n = 0.0, 0
        bar = keras.utils.Progbar(None, verbose=cfg.verbose) if cfg.verbose and is_chief() else None
        for batch in dist:
            total += float(step(batch))
            n += 1
            if bar:
                bar.update(n, [("loss", total / n)])
        history["loss"].append(total / max(n, 1))
        _LOGGER.info("epoch %d: loss %.4f (%d steps, %d replicas)", epoch + 1, total / max(n, 1), n,
                     strategy.num_replicas_in_sync)
        # Called directly (not model.predict): outside strategy.run the
        # replicas' variables are read locally, with no collective.
        s = np.concatenate([_direct_scores(model, x_val[i:i + 1024]) for i in range(0, len(x_val), 1024)])
        m = float(np.nanmean(ev.average_precisions(y_val, s)))
        history["val_map"].append(m)
        history["val_top1"].append(ev.top1_accuracy(y_val, s)[0])
        _LOGGER.info("epoch %d: validation mAP %.4f top-1 %.4f", epoch + 1, m, history["val_top1"][-1])
        if m > best:
            best, best_epoch = m, epoch + 1
            if cfg.select_best:
                best_weights = [np.array(w) for w in model.get_weights()]
    if best_weights is not None:
        model.set_weights(best_weights)
    return history, best_epoch


def _direct_scores(model: Any, x: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    out = model(x, training=False)
    return np.asarray(out["classes"] if isinstance(out, dict) else out, np.float32)


def _ensemble(members: Sequence[Any], output: str) -> Any:
    """One Keras model averaging ``output`` of the members (shared input)."""
    import keras

    if len(members) == 1:
        return models.serving_model(members[0], output)
    inp = keras.Input((params.WINDOW_EMBEDDINGS, params.EMBEDDING_SIZE), dtype="uint8", name="embeddings")
    outs = [models.serving_model(m, output, name=f"member{i}_{m.name}_{output}")(inp) for i, m in enumerate(members)]
    return keras.Model(inp, keras.layers.Average(name=output)(outs), name=f"ensemble_{output}")


def fit(cfg: FitConfig, clips: data_mod.Clips | None = None, stats: data_mod.IngestStats | None = None) -> Path:
    """Runs a training job and writes its run directory.

    Args:
      cfg: the configuration.
      clips: already-loaded clips (otherwise read from ``cfg.data``).
      stats: their ingest statistics.

    Returns:
      The run directory.
    """
    cfg.validate()
    import tensorflow as tf

    t0 = time.monotonic()
    class_map = resolve_class_map(cfg)
    strategy = _strategy(cfg.strategy)
    if cfg.stream:
        prep = prepare_stream(cfg, class_map)
    else:
        if clips is None:
            clips, stats = data_mod.load_clips(cfg.data, short=cfg.short, num_labels=class_map.num_labels)
        if len(clips) == 0:
            raise data_mod.DataError(f"no usable clips in {cfg.data}")
        prep = prepare(cfg, clips, class_map, stats)
    t_data = time.monotonic() - t0
    members, histories, best_epochs, member_info = [], [], [], []
    for k, name in enumerate(cfg.member_models()):
        member_cfg = replace(cfg, model=name)
        model, hist, best_epoch = train_one(member_cfg, prep, class_map, cfg.seed + k, strategy)
        members.append(model)
        histories.append(hist)
        best_epochs.append(best_epoch)
        m_scores = _window_scores(model, prep.x_val)
        member_info.append({"model": name, "seed": cfg.seed + k, "best_epoch": best_epoch,
                            "val_mAP": float(np.nanmean(ev.average_precisions(prep.y_val, m_scores)))})
        _LOGGER.info("member %d (%s): validation mAP %.4f", k + 1, name, member_info[-1]["val_mAP"])
    window = _ensemble(members, "classes")
    seconds_names = [name for name in cfg.member_models() if models.recipe(name).seconds]
    with_seconds = [m for m, name in zip(members, cfg.member_models()) if models.recipe(name).seconds]
    seconds = _ensemble(with_seconds, "seconds") if with_seconds else None
    t_train = time.monotonic() - t0 - t_data
    seconds_info = None
    val_stream = None
    if seconds is not None and prep.frames_val is not None:
        try:
            val_stream = validation_stream(prep)
        except ValueError as exc:  # e.g. every validation clip has several classes
            _LOGGER.warning("no per-second validation: %s", exc)
    if val_stream is not None:
        val_x, val_labels = val_stream
        val_mixed = scenes.is_large_class_set(prep.y_val.shape[1])
        sec_scores = np.asarray(seconds.predict(val_x, batch_size=1024, verbose=0), np.float32)
        seconds_info = {
            "trained_on": "scenes" if all(models.recipe(n).scenes for n in seconds_names) else "clips",
            "mixed_scenes": mixed_scenes(cfg, prep.y_val),
            "lookaheads": sorted({0, 1, cfg.lookahead}),
            "selected_for_lookahead": cfg.lookahead if any(models.recipe(n).scenes for n in seconds_names) else None,
            "validation": seconds_validation(sec_scores, val_labels, sorted({0, 1, cfg.lookahead})),
            "validation_stream": (f"scenes.build_stream{' (mixed, exhausted)' if val_mixed else ''} over the "
                                  f"{len(prep.x_val)} validation clips, "
                                  f"default_rng(0): {len(val_labels)} embeddings, scored by the daemon's rolling "
                                  "windows (left-padded at the start); micro F1 over the classes at per-class "
                                  "max-F1 thresholds"),
        }
        for key, r in seconds_info["validation"].items():
            _LOGGER.info("per-second scores, look-ahead %s: micro F1 %.4f, mAP %.4f", key, r["micro_f1"], r["mAP"])
    scores = _window_scores(window, prep.x_val)
    thresholds = ev.calibrate_thresholds(prep.y_val, scores, class_map.names)
    metrics = ev.compute_metrics(prep.y_val, scores, thresholds, class_map.names)
    metrics["split"] = (
        f"{cfg.split} validation split of {cfg.data} ({cfg.val_fraction:.0%}"
        f"{', by video_id' if cfg.split == 'grouped' else ', rows after oversampling'})"
    )
    metrics["thresholds_calibrated_on"] = "the same validation split (max F1 per class)"
    metrics["at_threshold_0.5"] = {
        k: v for k, v in ev.compute_metrics(prep.y_val, scores, None, class_map.names).items() if k in ("macro_f1",)
    }
    out = Path(cfg.out)
    if not is_chief():
        _LOGGER.info("worker done (mAP %.4f); only the chief writes the run directory", metrics["mAP"] or 0)
        return out
    out.mkdir(parents=True, exist_ok=True)
    window.save(out / "model.keras")
    if seconds is not None:
        seconds.save(out / "seconds.keras")
    history = histories[0] if len(histories) == 1 else {f"{k}_m{i}": v for i, h in enumerate(histories) for k, v in h.items()}
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    (out / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    run_info = {
        "metrics": metrics,
        "thresholds": thresholds,
        "data": prep.summary,
        "class_map": class_map.to_metadata(),
        "label_mapping": class_map.mapping,
        "class_set": _class_set_info(cfg),
        "best_epochs": best_epochs,
        "members": member_info,
        "per_second": seconds_info,
        "seconds": {"data": round(t_data, 2), "train": round(t_train, 2)},
        "tensorflow": tf.__version__,
    }
    (out / "metrics.json").write_text(json.dumps(run_info, indent=2) + "\n")
    np.savez_compressed(out / "val_scores.npz", y=prep.y_val, scores=scores, seen=prep.val_seen)
    ev.plot_all(out, prep.y_val, scores, thresholds, history if len(histories) == 1 else histories[0], class_map.names)
    _LOGGER.info(
        "run %s: validation mAP %.4f, top-1 %.4f, macro-F1 %.4f (train %.0f s)",
        out, metrics["mAP"] or float("nan"), metrics["top1_accuracy"] or float("nan"), metrics["macro_f1"], t_train,
    )
    return out


# --- Training on synthetic scenes (models whose recipe has ``scenes=True``) ---

def rolling_windows(embeddings: npt.NDArray[np.uint8], start: npt.ArrayLike, end: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Index arrays of the daemon's rolling windows, left-padded at a stream start.

    The window ending at embedding ``e`` of a stream that started at ``s``
    holds ``e-9 .. e``; positions before ``s`` repeat embedding ``s`` (the
    daemon fills a young window with its oldest embedding).

    Args:
      embeddings: the stream's ``[T, ...]`` (only its length is used).
      start, end: ``[W]`` stream start and window end of every window.

    Returns:
      int64 ``[W, 10]`` indices into the stream.
    """
    end = np.asarray(end, dtype=np.int64)
    start = np.asarray(start, dtype=np.int64)
    if np.any(end >= len(embeddings)) or np.any(start > end) or np.any(start < 0):
        raise ValueError("need 0 <= start <= end < len(stream) for every window")
    idx = end[:, None] - (params.WINDOW_EMBEDDINGS - 1) + np.arange(params.WINDOW_EMBEDDINGS)[None]
    return np.maximum(idx, start[:, None])


def scene_windows(
    x: npt.NDArray[np.uint8],
    frames: npt.NDArray[np.int32],
    y: npt.NDArray,
    aux: npt.NDArray[np.uint8],
    rng: np.random.Generator,
    n_windows: int,
    young_share: float = 0.1,
    mixed: bool = False,
) -> tuple[npt.NDArray[np.uint8], dict[str, npt.NDArray[np.float32]]]:
    """Training windows cut from one fresh stream of scenes (``train.scenes``).

    The stream is built from the given clips with reuse (any length); window
    ends are drawn uniformly, so windows straddle clip and scene boundaries as
    the daemon's rolling window does. A ``young_share`` of them are young
    windows: the stream starts 0-8 embeddings before their end, and the window
    is left-padded with that first embedding.

    Returns:
      ``(windows uint8 [W, 10, 128], targets)`` with ``seconds`` ``[W, 10, C]``
      (each embedding's clip labels), ``classes`` ``[W, C]`` (any second
      carries the class) and, when ``aux`` has columns, ``audioset``
      ``[W, num_aux]`` (the union of the window's clips' labels).
    """
    # A scene is 2 clips on average, about 19 embeddings: enough scenes that
    # the windows overlap about once per embedding.
    n_scenes = max(4, n_windows // 18)
    stream = scenes.build_stream(x, frames, y, rng, max_scenes=n_scenes, reuse=True, mixed=mixed)
    t = len(stream)
    if t < params.WINDOW_EMBEDDINGS:
        raise ValueError(f"a stream of {t} embeddings is shorter than one window")
    end = rng.integers(params.WINDOW_EMBEDDINGS - 1, t, n_windows)
    start = np.zeros(n_windows, np.int64)
    young = rng.random(n_windows) < young_share
    start[young] = end[young] - rng.integers(0, params.WINDOW_EMBEDDINGS - 1, int(young.sum()))
    idx = rolling_windows(stream.embeddings, start, end)
    sec = stream.labels[idx].astype(np.float32)
    targets = {"seconds": sec, "classes": sec.max(axis=1)}
    if aux.shape[1]:
        targets["audioset"] = aux[stream.clip[idx]].max(axis=1).astype(np.float32)
    return stream.embeddings[idx], targets


def per_second_metrics(
    seconds: npt.NDArray[np.float32], labels: npt.NDArray, lookahead: int
) -> dict[str, Any]:
    """Per-second quality of a stream scored by the daemon's rolling windows.

    Args:
      seconds: ``[T, 10, C]`` per-second scores of the window ending at each
        embedding (:func:`rolling_windows` with the stream's start).
      labels: ``[T, C]`` each embedding's ground truth.
      lookahead: L; embedding ``i - L`` takes the score at position ``9 - L``
        of window ``i``.

    Returns:
      ``micro_f1`` (over the classes, each at its own max-F1 threshold),
      ``mAP``, ``per_class`` AP and F1, ``thresholds``, ``lookahead``.
    """
    pos = params.WINDOW_EMBEDDINGS - 1 - lookahead
    s = seconds[lookahead:, pos]
    y = np.asarray(labels)[: len(labels) - lookahead]
    thr = ev.calibrate_thresholds(y, s, [str(c) for c in range(y.shape[1])])
    aps = ev.average_precisions(y, s)
    tp = fp = fn = 0
    f1s = []
    for c in range(y.shape[1]):
        pred, true = s[:, c] >= thr[str(c)], y[:, c] > 0
        a, b, d = int(np.sum(pred & true)), int(np.sum(pred & ~true)), int(np.sum(~pred & true))
        tp, fp, fn = tp + a, fp + b, fn + d
        f1s.append(2 * a / max(2 * a + b + d, 1))
    return {
        "lookahead": lookahead,
        "micro_f1": 2 * tp / max(2 * tp + fp + fn, 1),
        "mAP": float(np.nanmean(aps)),
        "per_class_ap": [float(v) for v in aps],
        "per_class_f1": f1s,
        "thresholds": [thr[str(c)] for c in range(y.shape[1])],
    }
