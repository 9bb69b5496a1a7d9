"""Writing the model bundle the daemon loads (``metadata.json``, ``model.keras``, ``model.tflite``).

A bundle may also hold the per-second scores ``[B, 10, 4]``:
``seconds.tflite`` (both runtimes can run it) and ``seconds.keras`` (for the
TensorFlow runtime); ``metadata["seconds"]`` says so, what the model was
trained on, and its per-second validation figures. The TFLite files, and the
Keras files as reloaded from the bundle, are checked against the model being
exported on the way out: they must agree to ``PARITY_TOLERANCE``.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import params
from pipeline.classifier import (
    BUNDLE_FORMAT,
    KERAS_NAME,
    METADATA_NAME,
    SECONDS_TFLITE_NAME,
    TFLITE_NAME,
)

SECONDS_KERAS_NAME = "seconds.keras"
from pipeline.labels import ClassMap

_LOGGER = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4
"""Largest allowed |TFLite - Keras| difference of a score."""
PARITY_CLIPS = 256


class ExportError(RuntimeError):
    """The bundle could not be written or failed its parity check."""


def to_tflite(model: Any, path: str | os.PathLike) -> Path:
    """Converts a Keras model (uint8 ``[B, 10, 128]`` input) to a float32 TFLite file.

    Goes through a temporary SavedModel (``model.export``): converting the
    Keras call directly would leave the weights, held in resource variables,
    out of the flatbuffer. The batch dimension stays dynamic.
    """
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="audiocap-tflite-") as tmp:
        saved = Path(tmp) / "saved_model"
        model.export(str(saved), format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        blob = converter.convert()
    out = Path(path)
    out.write_bytes(blob)
    return out


def check_parity(keras_model: Any, path: Path, x: np.ndarray) -> float:
    """Max |file - model| over ``x`` for a written ``.tflite`` or ``.keras`` file.

    Raises:
      ExportError: above the tolerance (or NaN).
    """
    ref = np.asarray(keras_model.predict(x, batch_size=256, verbose=0), dtype=np.float32)
    if path.suffix == ".keras":
        import keras

        got = np.asarray(keras.saving.load_model(path, compile=False).predict(x, batch_size=256, verbose=0), np.float32)
    else:
        from pipeline.tflite import TFLiteModel

        got = TFLiteModel(path)(x)
    diff = float(np.max(np.abs(ref - got))) if len(x) else 0.0
    if not diff <= PARITY_TOLERANCE:  # also catches NaN
        raise ExportError(f"{path}: the written model and Keras differ by {diff:.2e} > {PARITY_TOLERANCE}")
    return diff


def write_bundle(
    out_dir: str | os.PathLike,
    model: Any,
    class_map: ClassMap,
    thresholds: dict[str, float],
    metrics: dict[str, Any],
    training: dict[str, Any],
    name: str = "audiocap-classifier",
    version: str = "1",
    seconds_model: Any = None,
    parity_inputs: np.ndarray | None = None,
    extra: dict[str, Any] | None = None,
    seconds_info: dict[str, Any] | None = None,
) -> Path:
    """Writes a complete bundle atomically (a temporary sibling, then a rename).

    Args:
      out_dir: the bundle directory (replaced if it exists).
      model: single-output Keras model, uint8 ``[B,10,128]`` -> ``[B,4]``.
      class_map: the classes and their AudioSet label indices.
      thresholds: per-class decision thresholds (calibrated on validation).
      metrics: validation metrics; should hold a ``split`` key saying where
        they were measured.
      training: data summary, model, hyper-parameters, command.
      name, version: the bundle's identity (the daemon reports ``name@version``).
      seconds_model: optional Keras model uint8 ``[B,10,128]`` -> ``[B,10,4]``
        (written as ``seconds.tflite`` and ``seconds.keras``).
      seconds_info: more keys for ``metadata["seconds"]`` (what it was
        trained on, the look-aheads and figures it was validated with).
      parity_inputs: uint8 ``[N,10,128]`` clips for the TFLite parity check
        (default: seeded random windows).
      extra: more metadata keys.

    Returns:
      The bundle directory.

    Raises:
      ExportError: parity check failed (nothing is left behind).
    """
    out = Path(out_dir)
    missing = set(class_map.names) - set(thresholds)
    if missing:
        raise ValueError(f"thresholds missing for {sorted(missing)}")
    if parity_inputs is None:
        rng = np.random.default_rng(0)
        parity_inputs = rng.integers(0, 256, (PARITY_CLIPS, params.WINDOW_EMBEDDINGS, params.EMBEDDING_SIZE), dtype=np.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save(tmp / KERAS_NAME)
        to_tflite(model, tmp / TFLITE_NAME)
        diff = check_parity(model, tmp / TFLITE_NAME, parity_inputs)
        meta_seconds = None
        if seconds_model is not None:
            # Both formats: LiteRT runs the .tflite, and the daemon's
            # TensorFlow runtime can run the Keras model itself.
            to_tflite(seconds_model, tmp / SECONDS_TFLITE_NAME)
            seconds_model.save(tmp / SECONDS_KERAS_NAME)
            meta_seconds = {
                "tflite": SECONDS_TFLITE_NAME,
                "keras": SECONDS_KERAS_NAME,
                "output": f"float32 [B, {params.WINDOW_EMBEDDINGS}, {len(class_map.names)}]: each second's score",
                "parity_max_abs_diff": {
                    "tflite": check_parity(seconds_model, tmp / SECONDS_TFLITE_NAME, parity_inputs),
                    "keras": check_parity(seconds_model, tmp / SECONDS_KERAS_NAME, parity_inputs),
                },
                **(seconds_info or {}),
            }
        meta = {
            "format": BUNDLE_FORMAT,
            "name": name,
            "version": str(version),
            "classes": class_map.to_metadata(),
            "label_mapping": class_map.mapping,
            "input": {
                "frames": params.WINDOW_EMBEDDINGS,
                "dims": params.EMBEDDING_SIZE,
                "dtype": "uint8",
                "scaling": f"x / {params.EMBEDDING_SCALE:g}",
            },
            "output": {"shape": f"[B, {len(class_map.names)}]", "range": [0.0, 1.0], "multi_label": True},
            "thresholds": {n: float(thresholds[n]) for n in class_map.names},
            "metrics": metrics,
            "training": training,
            "tflite_parity_max_abs_diff": diff,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "files": {"keras": KERAS_NAME, "tflite": TFLITE_NAME,
                      **({"seconds_keras": SECONDS_KERAS_NAME, "seconds_tflite": SECONDS_TFLITE_NAME}
                         if meta_seconds else {})},
        }
        if meta_seconds:
            meta["seconds"] = meta_seconds
        meta.update(extra or {})
        (tmp / METADATA_NAME).write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        tmp.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _LOGGER.info("wrote bundle %s (%s@%s, TFLite parity %.1e)", out, name, version, diff)
    return out


def command_line() -> str:
    """The command that is running, for the bundle's ``training.command``."""
    return " ".join(["audiocap-train", *sys.argv[1:]]) if sys.argv else ""


def _source_bundle(path: str | os.PathLike, class_map: ClassMap) -> tuple[Path, dict[str, Any]]:
    """An existing bundle to take a model from, and its metadata; its classes must be the run's."""
    from pipeline.classifier import read_metadata

    src = Path(path)
    meta = read_metadata(src)
    src_map = ClassMap.from_metadata(meta["classes"], mapping=meta.get("label_mapping", "ontology"))
    if src_map.names != class_map.names:
        raise ValueError(f"{src} scores {src_map.names}; the run scores {class_map.names}")
    return src, meta


def export_run(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    name: str = "audiocap-classifier",
    version: str = "1",
    seconds: bool = True,
    window_from: str | os.PathLike | None = None,
    seconds_from: str | os.PathLike | None = None,
) -> Path:
    """Writes the bundle for a run directory made by ``audiocap-train fit``.

    Thresholds and metrics come from the run's validation split; the parity
    checks use seeded random windows.

    Args:
      window_from: take the window model (``model.keras``), its thresholds,
        metrics and class map from this existing bundle, and only the
        per-second model from the run (for a stream model whose window output
        does not match the shipped clip tagger).
      seconds_from: the other way round: take the per-second model and what
        its validation found from this existing bundle, the window model from
        the run (a better clip tagger under the same per-second model).

    Raises:
      FileNotFoundError: the run directory lacks model.keras/metrics.json, or
        a ``*_from`` bundle is not one or lacks its model.
      ValueError: both ``*_from`` are given, or a bundle's classes differ from the run's.
    """
    import keras

    run = Path(run_dir)
    for needed in ("model.keras", "metrics.json", "config.json"):
        if not (run / needed).is_file():
            raise FileNotFoundError(f"{run} is not a fit run directory: {needed} is missing")
    info = json.loads((run / "metrics.json").read_text())
    cfg = json.loads((run / "config.json").read_text())
    if window_from is not None and seconds_from is not None:
        raise ValueError("take the window model or the per-second model from another bundle, not both")
    sec = None
    if seconds and (run / "seconds.keras").is_file():
        sec = keras.saving.load_model(run / "seconds.keras", compile=False)
    class_map = ClassMap.from_metadata(info["class_map"], mapping=info.get("label_mapping", "ontology"))
    per_second = info.get("per_second") or {}
    seconds_training: dict[str, Any] | None = None
    if seconds_from is not None:
        sec_src, sec_meta = _source_bundle(seconds_from, class_map)
        keras_file = (sec_meta.get("seconds") or {}).get("keras")
        if not keras_file or not (sec_src / str(keras_file)).is_file():
            raise FileNotFoundError(f"{sec_src} has no per-second Keras model (seconds.keras) to take")
        sec = keras.saving.load_model(sec_src / str(keras_file), compile=False)
        per_second = sec_meta["seconds"]
        seconds_training = {"from": f"{sec_meta['name']}@{sec_meta['version']} ({sec_src})",
                            **dict(sec_meta["training"].get("seconds_model") or sec_meta["training"])}
    rng = np.random.default_rng(0)
    parity = rng.integers(0, 256, (PARITY_CLIPS, params.WINDOW_EMBEDDINGS, params.EMBEDDING_SIZE), dtype=np.uint8)
    training = {
        "data": info.get("data"),
        "model": cfg.get("model"),
        "hyperparameters": {k: v for k, v in cfg.items() if k not in ("data", "out", "extra", "verbose")},
        "best_epochs": info.get("best_epochs"),
        "train_seconds": info.get("seconds"),
        "command": (cfg.get("extra") or {}).get("command"),
        "data_paths": cfg.get("data"),
        "run": str(run),
        "tensorflow": info.get("tensorflow"),
    }
    thresholds, metrics = info["thresholds"], info["metrics"]
    if window_from is None:
        model = keras.saving.load_model(run / "model.keras", compile=False)
    else:
        src, src_meta = _source_bundle(window_from, class_map)
        model = keras.saving.load_model(src / KERAS_NAME, compile=False)
        thresholds, metrics = src_meta["_thresholds"], src_meta["metrics"]
        training = {
            **{k: v for k, v in src_meta["training"].items()},
            "window_model_from": f"{src_meta['name']}@{src_meta['version']} ({src})",
            "seconds_model": training,
        }
    if seconds_training is not None:
        training["seconds_model"] = seconds_training
    seconds_info = {k: per_second[k] for k in ("trained_on", "lookaheads", "selected_for_lookahead", "validation",
                                               "validation_stream") if k in per_second}
    if sec is not None:
        seconds_info["model"] = per_second.get("model") if seconds_from is not None else cfg.get("model")
    return write_bundle(
        out_dir, model, class_map, thresholds, metrics, training,
        name=name, version=version, seconds_model=sec, parity_inputs=parity, seconds_info=seconds_info,
        extra={"class_set": info["class_set"]} if info.get("class_set") else None,
    )
