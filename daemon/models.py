"""Builds every network the daemon runs, in one place.

:func:`build_models` is the single factory for VGGish, the PCA stage and the
classifier, on either runtime (``tensorflow``: Keras; ``litert``: ``.tflite``
files through :class:`pipeline.tflite.TFLiteModel`, no TensorFlow import).
Tests and benchmarks call it too, so what they measure is what the daemon runs.

Cheap checks come first (PCA file, classifier folder) so that a wrong path is
reported before TensorFlow spends seconds loading.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import numpy.typing as npt

from daemon.config import EventsConfig, ModelConfig
from daemon.exitcodes import EX_CONFIG, EX_UNAVAILABLE, ExitError
from pipeline import params

_LOGGER = logging.getLogger(__name__)

class ModelError(ExitError):
    """A model cannot be loaded; the message says which and how to fix it."""

    def __init__(self, message: str, exit_code: int = EX_CONFIG) -> None:
        super().__init__(message, exit_code)


@dataclass
class Models:
    """The loaded networks.

    Attributes:
      classifier: has ``classes``, ``thresholds``, ``name``, ``version`` and
        ``predict(uint8 [B, 10, 128]) -> float32 [B, 4]``.
      model_id: ``name@version`` of the classifier (goes into payloads).
      vggish: float32 ``[N, 96, 64]`` -> float32 ``[N, 128]``, or ``None`` when
        only embeddings are processed (replay).
      postprocessor: the PCA/quantisation stage, or ``None`` likewise.
    """

    classifier: Any
    model_id: str
    vggish: Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]] | None = None
    postprocessor: Any = None
    resample_filter: str = params.RESAMPLE_FILTER

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names in score order."""
        return tuple(self.classifier.classes)

    def make_embedder(self, sample_rate: int) -> Any:
        """A fresh :class:`pipeline.embedder.Embedder` for a stream at ``sample_rate``.

        Raises:
          ModelError: when the models were built without VGGish (replay only).
        """
        from pipeline.embedder import Embedder

        if self.vggish is None or self.postprocessor is None:
            raise ModelError("audio input needs VGGish and the PCA file, but they were not loaded")
        return Embedder(self.vggish, self.postprocessor, sample_rate, self.resample_filter)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _load_vggish(cfg: ModelConfig) -> Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]:
    from pipeline.runtime import RuntimeMismatchError, load_embedding_model
    from pipeline.vggish import VGGishLoadError

    src = cfg.vggish
    remote = cfg.runtime == "tensorflow" and (
        "://" in src or (not os.path.isabs(src) and src.count("/") >= 2 and not os.path.exists(src))
    )
    try:
        return load_embedding_model(src, cfg.runtime, cfg.num_threads)
    except RuntimeMismatchError as exc:
        raise ModelError(f"[model] vggish: {_first_line(exc)}") from None
    except VGGishLoadError as exc:
        # An unreachable hub may come back: let systemd retry (EX_UNAVAILABLE);
        # a wrong local path will not (EX_CONFIG).
        raise ModelError(_first_line(exc), EX_UNAVAILABLE if remote else EX_CONFIG) from None


_CLASSIFIER_RUNTIME = {"tensorflow": "auto", "litert": "litert"}
"""Daemon runtime -> :func:`pipeline.classifier.load_classifier` runtime. The
classifier's TFLite file gives the Keras model's scores (the bundle tests check
their parity) at ~0.2 ms instead of ~1.5 ms a window, so the TensorFlow runtime
uses it too when LiteRT is installed ("auto"); "tensorflow" is about VGGish."""


def _load_classifier(cfg: ModelConfig) -> Any:
    try:
        from pipeline.classifier import load_classifier
    except ImportError as exc:
        raise ModelError(f"the classifier package is not installed ({exc})", 1) from None
    try:
        return load_classifier(
            cfg.classifier or None, runtime=_CLASSIFIER_RUNTIME[cfg.runtime], num_threads=cfg.num_threads
        )
    except Exception as exc:  # the loader's own errors name the file; keep them one line
        where = cfg.classifier or "the bundled model"
        raise ModelError(f"cannot load the classifier bundle {where}: {_first_line(exc)}") from None


def build_models(cfg: ModelConfig, need_embedder: bool = True) -> Models:
    """Loads the networks named by ``[model]``.

    Args:
      cfg: the ``[model]`` table.
      need_embedder: load VGGish and the PCA file (not needed for replay).

    Returns:
      :class:`Models`.

    Raises:
      ModelError: one line naming what failed; ``exit_code`` 78 for a bad path
        or file, 69 for an unreachable TF-Hub.
    """
    postprocessor = None
    if need_embedder:
        from pipeline.postprocess import PCAParamsError, Postprocessor

        try:
            postprocessor = Postprocessor(cfg.pca)
        except PCAParamsError as exc:
            raise ModelError(_first_line(exc)) from None
    if cfg.classifier:  # before VGGish loads: a wrong path fails at once
        from pipeline.classifier import resolve_bundle, shipped_bundles

        if not resolve_bundle(cfg.classifier).is_dir():
            raise ModelError(
                f"classifier bundle not found: {cfg.classifier} is not a directory (expected metadata.json, "
                f"model.keras, model.tflite) nor a shipped bundle ({', '.join(shipped_bundles())}); leave "
                "[model] classifier empty for the default bundle"
            )
    vggish = _load_vggish(cfg) if need_embedder else None
    classifier = _load_classifier(cfg)
    model_id = f"{getattr(classifier, 'name', 'classifier')}@{getattr(classifier, 'version', '0')}"
    # One line, in the config's words (tensorflow | litert) for both networks:
    # the classifier runs on LiteRT whenever it is installed, whatever VGGish runs on.
    on = "litert" if getattr(classifier, "runtime", cfg.runtime) == "litert" else "tensorflow"
    vggish_part = f"VGGish {cfg.vggish} on {cfg.runtime}, " if need_embedder else ""
    _LOGGER.info("models: %sclassifier %s on %s, classes %s", vggish_part, model_id, on, ", ".join(classifier.classes))
    return Models(classifier=classifier, model_id=model_id, vggish=vggish, postprocessor=postprocessor)


def build_tracker(models: Models, events: EventsConfig | None = None) -> Any:
    """The event tracker for ``models``: the bundle's calibrated tracker (per-second
    scoring, look-ahead, per-class thresholds and timings), with every value that
    ``[events]`` sets taking precedence (see :func:`pipeline.events.make_tracker`).

    Raises:
      ValueError: thresholds or timings the tracker refuses (the caller names the file).
    """
    from pipeline.events import make_tracker

    ev = events or EventsConfig()

    def given(value: float) -> float | None:
        return None if value < 0 else value  # -1: not set, the bundle's

    return make_tracker(
        models.classifier, scoring=ev.scoring, lookahead_s=given(ev.lookahead_s),
        on_thresholds=ev.thresholds, off_thresholds=ev.off_thresholds, off_ratio=given(ev.off_ratio),
        min_duration_s=given(ev.min_duration_s), hold_s=given(ev.hold_s), captions=ev.captions,
    )
