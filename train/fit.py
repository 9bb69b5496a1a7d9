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
from pipeline.labels import ClassMap, build_class_map, find_audioset_metadata
from train import data as data_mod
from train import evaluate as ev
from train import models

_LOGGER = logging.getLogger(__name__)

SPLITS = ("grouped", "random")
OVERSAMPLING = ("none", "permute")
STRATEGIES = ("none", "mirrored", "multiworker")


@dataclass
class FitConfig:
    """Everything a training run depends on (saved as the run's ``config.json``)."""

    data: list[str]
    """tfrecord directories, globs or files."""
    out: str
    """The run directory to write."""
    model: str = "attention_mil"
    """One of ``models.MODEL_NAMES``."""
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
    """attention_mil: weight of the 527-label auxiliary loss (0 drops the head)."""
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
        checks = [
            (self.model in models.MODEL_NAMES, f"model must be one of {models.MODEL_NAMES}"),
            (self.loss in models.LOSSES, f"loss must be one of {models.LOSSES}"),
            (self.split in SPLITS, f"split must be one of {SPLITS}"),
            (self.oversample in OVERSAMPLING, f"oversample must be one of {OVERSAMPLING}"),
            (self.strategy in STRATEGIES, f"strategy must be one of {STRATEGIES}"),
            (self.short in data_mod.SHORT_POLICIES, f"short must be one of {data_mod.SHORT_POLICIES}"),
            (0 < self.val_fraction < 1, "val_fraction must be in (0, 1)"),
            (self.epochs >= 1 and self.batch_size >= 1, "epochs and batch_size must be >= 1"),
            (self.ensemble >= 1, "ensemble must be >= 1"),
            (all(m in models.MODEL_NAMES for m in self.member_models()),
             f"members must be model names from {models.MODEL_NAMES}, e.g. attention_mil*2,mean_mlp*2"),
            (self.loss == "binary" or self.positives_only,
             "categorical/sparse losses need --positives-only (softmax cannot say 'none of the four')"),
            (self.loss == "binary" or self.model.startswith("paper"), "only the paper models take categorical/sparse losses"),
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


def resolve_class_map(cfg: FitConfig) -> ClassMap:
    """The class map from the config's label files (or those near the data)."""
    csv_path, onto = (cfg.labels_csv, cfg.ontology)
    if csv_path is None or (onto is None and cfg.mapping == "ontology"):
        found_csv, found_onto = find_audioset_metadata(data_mod.list_files(cfg.data)[0])
        csv_path = csv_path or str(found_csv)
        onto = onto or (str(found_onto) if found_onto else None)
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
    x, y, aux, vids = clips.x[keep], y[keep], clips.labels[keep], clips.video_id[keep]
    rng_seed = cfg.seed
    if cfg.split == "random":
        if cfg.oversample == "permute":
            x, y, src = data_mod.permutation_oversample(x, y, seed=rng_seed)
            aux, vids = aux[src], vids[src]
        tr, va = data_mod.random_split(len(x), cfg.val_fraction, seed=rng_seed)
        x_tr, y_tr, aux_tr = x[tr], y[tr], aux[tr]
    else:
        tr, va = data_mod.grouped_split(vids, cfg.val_fraction)
        x_tr, y_tr, aux_tr = x[tr], y[tr], aux[tr]
        if cfg.oversample == "permute":
            x_tr, y_tr, src = data_mod.permutation_oversample(x_tr, y_tr, seed=rng_seed)
            aux_tr = aux_tr[src]
    train_videos = set(vids[tr])
    val_seen = np.array([v in train_videos for v in vids[va]], dtype=bool)
    leaked = len(train_videos & set(vids[va]))
    summary = {
        "clips_read": len(clips),
        "clips_used": int(len(keep)),
        "train_rows": int(len(x_tr)),
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
    return Prepared(x_tr, y_tr, aux_tr, x[va], y[va], summary, val_seen)


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


def build_model(cfg: FitConfig, x_train: npt.NDArray[np.uint8], class_map: ClassMap, seed: int) -> Any:
    """The Keras training model for ``cfg`` (compiled)."""
    import keras

    keras.utils.set_random_seed(seed)
    n = len(class_map.names)
    if cfg.model == "attention_mil":
        mean, var = models.input_statistics(x_train)
        aux = class_map.num_labels if cfg.aux_weight > 0 else 0
        model = models.attention_mil(n, aux, hidden=cfg.hidden, dropout=cfg.dropout, mean=mean, var=var)
        losses = {"classes": "binary_crossentropy"}
        weights = {"classes": 1.0}
        if aux:
            losses["audioset"] = "binary_crossentropy"
            weights["audioset"] = cfg.aux_weight
        model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss=losses, loss_weights=weights)
        return model
    if cfg.model == "mean_mlp":
        mean, var = models.input_statistics(x_train)
        model = models.mean_mlp(n, hidden=cfg.hidden, dropout=cfg.dropout, mean=mean, var=var)
    elif cfg.model == "paper_cnn":
        model = models.paper_cnn(n, cfg.loss, cfg.normalise, cfg.last_pool)
    else:
        model = models.paper_dense(n, cfg.loss, cfg.normalise)
    loss = {"binary": "binary_crossentropy", "categorical": "categorical_crossentropy",
            "sparse": "sparse_categorical_crossentropy"}[cfg.loss]
    metrics = ["binary_accuracy"] if cfg.loss == "binary" else ["accuracy"]
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss=loss, metrics=metrics)
    return model


def training_targets(cfg: FitConfig, y: npt.NDArray[np.float32], aux: npt.NDArray[np.uint8]) -> Any:
    """Targets in the form the model's loss wants."""
    if cfg.model == "attention_mil":
        out = {"classes": y}
        if cfg.aux_weight > 0:
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
    if prep.train_stream is not None:
        aux = cfg.model == "attention_mil" and cfg.aux_weight > 0
        best = _BestByMAP(prep.x_val, prep.y_val, cfg.select_best)
        ds = prep.train_stream(aux)
        if cfg.model == "attention_mil" and not aux:
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
        history = _distributed_fit(cfg, model, ds.with_options(opts), strategy, sample_weight is not None)
        return model, history, cfg.epochs
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    return model, history, (best.best_epoch if best else cfg.epochs)


def _per_example_loss(cfg: FitConfig, y: Any, pred: Any) -> Any:
    """The compiled loss, per example ``[b]`` (for the custom distributed loop)."""
    import keras

    if isinstance(pred, dict):
        total = keras.losses.binary_crossentropy(y["classes"], pred["classes"])
        if "audioset" in y:
            total = total + cfg.aux_weight * keras.losses.binary_crossentropy(y["audioset"], pred["audioset"])
        return total
    if cfg.loss == "categorical":
        return keras.losses.categorical_crossentropy(y, pred)
    if cfg.loss == "sparse":
        return keras.losses.sparse_categorical_crossentropy(y, pred)
    return keras.losses.binary_crossentropy(y, pred)


def _distributed_fit(cfg: FitConfig, model: Any, ds: Any, strategy: Any, weighted: bool) -> dict[str, list[float]]:
    """A plain ``tf.distribute`` training loop (``strategy.run`` + all-reduce).

    Keras 3's ``fit`` under MultiWorkerMirroredStrategy fails in its own
    bookkeeping (it all-reduces the first batch and scalar logs along axes
    they do not have), so the distributed path trains with an explicit loop:
    each replica computes the loss of its share of the global batch, scaled by
    the global batch size, and the optimizer all-reduces the gradients.
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

    history: dict[str, list[float]] = {"loss": []}
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
    return history


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
    with_seconds = [m for m, name in zip(members, cfg.member_models()) if name == "attention_mil"]
    seconds = _ensemble(with_seconds, "seconds") if with_seconds else None
    t_train = time.monotonic() - t0 - t_data
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
        "best_epochs": best_epochs,
        "members": member_info,
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
