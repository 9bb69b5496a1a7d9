"""Writing the model bundle the daemon loads (``metadata.json``, ``model.keras``, ``model.tflite``).

A bundle may also hold ``seconds.tflite``: the same network's per-second
scores ``[B, 10, 4]`` (``metadata["seconds"]`` says so).
The TFLite files are checked against Keras on the way out: they must agree to
``PARITY_TOLERANCE``.
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


def check_parity(keras_model: Any, tflite_path: Path, x: np.ndarray) -> float:
    """Max |TFLite - Keras| over ``x``; raises ExportError above the tolerance."""
    from pipeline.tflite import TFLiteModel

    ref = np.asarray(keras_model.predict(x, batch_size=256, verbose=0), dtype=np.float32)
    got = TFLiteModel(tflite_path)(x)
    diff = float(np.max(np.abs(ref - got))) if len(x) else 0.0
    if not diff <= PARITY_TOLERANCE:  # also catches NaN
        raise ExportError(f"{tflite_path}: TFLite and Keras differ by {diff:.2e} > {PARITY_TOLERANCE}")
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
      seconds_model: optional Keras model uint8 ``[B,10,128]`` -> ``[B,10,4]``.
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
            # Only the TFLite file: both runtimes score seconds with it, and
            # a second Keras copy of the same weights would double the bundle.
            to_tflite(seconds_model, tmp / SECONDS_TFLITE_NAME)
            check_parity(seconds_model, tmp / SECONDS_TFLITE_NAME, parity_inputs)
            meta_seconds = {
                "tflite": SECONDS_TFLITE_NAME,
                "output": f"float32 [B, {params.WINDOW_EMBEDDINGS}, {len(class_map.names)}]: each second's score",
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
            "files": {"keras": KERAS_NAME, "tflite": TFLITE_NAME},
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


def export_run(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    name: str = "audiocap-classifier",
    version: str = "1",
    seconds: bool = True,
) -> Path:
    """Writes the bundle for a run directory made by ``audiocap-train fit``.

    Thresholds and metrics come from the run's validation split; the TFLite
    parity check uses real validation windows when the run kept them.

    Raises:
      FileNotFoundError: the run directory lacks model.keras/metrics.json.
    """
    import keras

    run = Path(run_dir)
    for needed in ("model.keras", "metrics.json", "config.json"):
        if not (run / needed).is_file():
            raise FileNotFoundError(f"{run} is not a fit run directory: {needed} is missing")
    info = json.loads((run / "metrics.json").read_text())
    cfg = json.loads((run / "config.json").read_text())
    model = keras.saving.load_model(run / "model.keras", compile=False)
    sec = None
    if seconds and (run / "seconds.keras").is_file():
        sec = keras.saving.load_model(run / "seconds.keras", compile=False)
    class_map = ClassMap.from_metadata(info["class_map"], mapping=info.get("label_mapping", "ontology"))
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
    return write_bundle(
        out_dir, model, class_map, info["thresholds"], info["metrics"], training,
        name=name, version=version, seconds_model=sec, parity_inputs=parity,
    )
