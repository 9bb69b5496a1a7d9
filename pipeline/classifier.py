"""Loads a classifier bundle and scores 10-second windows of embeddings.

A bundle is a directory with ``metadata.json``, ``model.keras`` and
``model.tflite`` (optionally ``seconds.tflite`` for per-second scores, used by
both runtimes), written by ``audiocap-train export``. The bundle shipped
with the package lives in ``pipeline/models/<name>/`` and is what
``load_classifier()`` loads with no argument.

No TensorFlow import at module level: the ``litert`` runtime runs the TFLite
file through :class:`pipeline.tflite.TFLiteModel` (``ai_edge_litert``) and
never imports TensorFlow; ``keras`` imports it only when chosen.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline import params
from pipeline.events import DEFAULT_CAPTIONS

_LOGGER = logging.getLogger(__name__)

METADATA_NAME = "metadata.json"
KERAS_NAME = "model.keras"
TFLITE_NAME = "model.tflite"
SECONDS_TFLITE_NAME = "seconds.tflite"
BUNDLE_FORMAT = 1
RUNTIMES = ("auto", "litert", "keras")
MODELS_DIR = Path(__file__).resolve().parent / "models"
"""Where the shipped bundles live."""
DEFAULT_BUNDLE = "audiocap-4class"
"""The shipped bundle loaded when none is named: the four classes of the paper."""
REQUIRED_KEYS = ("name", "version", "classes", "input", "thresholds")
_HOW_TO_GET = (
    "make one with `audiocap-train fit --data DIR --out RUN && audiocap-train export --run RUN --out DIR` "
    "(see docs/training.md), or reinstall audiocap to restore the bundled model"
)


class BundleError(ValueError):
    """A classifier bundle is missing or malformed; the message names the path."""


class BundleNotFoundError(BundleError, FileNotFoundError):
    """The bundle (or one of its files) does not exist."""


def shipped_bundles() -> dict[str, Path]:
    """The bundles shipped in ``pipeline/models/``: directory name -> path."""
    return {p.parent.name: p.parent for p in sorted(MODELS_DIR.glob(f"*/{METADATA_NAME}"))}


def default_bundle_path() -> Path:
    """The bundle loaded when none is named: :data:`DEFAULT_BUNDLE` (or the only one shipped).

    Raises:
      BundleNotFoundError: no bundle is installed.
    """
    found = shipped_bundles()
    if DEFAULT_BUNDLE in found:
        return found[DEFAULT_BUNDLE]
    if not found:
        raise BundleNotFoundError(f"no classifier bundle found in {MODELS_DIR}; {_HOW_TO_GET}")
    first = next(iter(found.values()))
    if len(found) > 1:
        _LOGGER.warning("several bundles in %s and none is %s; using %s", MODELS_DIR, DEFAULT_BUNDLE, first)
    return first


def resolve_bundle(path: str | os.PathLike | None) -> Path:
    """A bundle directory from a path, or from the name of a shipped bundle.

    ``None`` is the default bundle. A name without a slash that is not a
    directory here, such as ``audiocap-home``, is looked up among the shipped
    bundles, so an installed audiocap needs no path into site-packages.
    """
    if path is None:
        return default_bundle_path()
    bundle = Path(path)
    if not bundle.exists() and len(bundle.parts) == 1 and bundle.name in shipped_bundles():
        return shipped_bundles()[bundle.name]
    return bundle


def _default_caption(name: str) -> str:
    return DEFAULT_CAPTIONS.get(name) or f"[{name}]"


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Reads and checks a bundle's ``metadata.json``.

    Raises:
      BundleNotFoundError / BundleError: naming the path and what is wrong.
    """
    bundle = Path(path)
    meta_path = bundle / METADATA_NAME
    if not bundle.is_dir():
        names = ", ".join(shipped_bundles()) or "none"
        raise BundleNotFoundError(
            f"classifier bundle not found: {bundle} is not a directory (shipped bundles, usable by name: {names}); "
            f"{_HOW_TO_GET}"
        )
    if not meta_path.is_file():
        raise BundleNotFoundError(f"classifier bundle {bundle} has no {METADATA_NAME}; {_HOW_TO_GET}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{meta_path} is not valid JSON ({exc}); {_HOW_TO_GET}") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{meta_path}: expected a JSON object; {_HOW_TO_GET}")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise BundleError(f"{meta_path} lacks {missing}; {_HOW_TO_GET}")
    try:
        names = tuple(str(c["name"]) for c in meta["classes"])
        inp = meta["input"]
        frames, dims = int(inp["frames"]), int(inp["dims"])
        thresholds = {n: float(meta["thresholds"][n]) for n in names}
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{meta_path}: malformed classes/input/thresholds ({exc!r}); {_HOW_TO_GET}") from None
    if (frames, dims) != (params.WINDOW_EMBEDDINGS, params.EMBEDDING_SIZE) or inp.get("dtype") != "uint8":
        raise BundleError(
            f"{meta_path}: the model takes {inp}; this audiocap feeds uint8 "
            f"[{params.WINDOW_EMBEDDINGS}, {params.EMBEDDING_SIZE}] windows"
        )
    if not names:
        raise BundleError(f"{meta_path}: no classes")
    if len(set(names)) != len(names):
        raise BundleError(f"{meta_path}: class names repeat ({list(names)}); {_HOW_TO_GET}")
    captions, urgent = {}, {}
    for c in meta["classes"]:
        name = str(c["name"])
        caption = c.get("caption", _default_caption(name))
        flag = c.get("urgent", False)
        if not isinstance(caption, str) or not caption.strip():
            raise BundleError(f"{meta_path}: class {name!r} has caption {caption!r}; expected a non-empty string")
        if not isinstance(flag, bool):
            raise BundleError(f"{meta_path}: class {name!r} has urgent {flag!r}; expected true or false")
        captions[name], urgent[name] = caption, flag
    meta["_captions"] = captions
    meta["_urgent"] = urgent
    meta["_class_names"] = names
    meta["_thresholds"] = thresholds
    return meta


def _graph_call(model: Any) -> Any:
    """``model`` as one traced TensorFlow graph for any batch size: the same scores as calling it eagerly
    (to ~1e-7) at ~1.5 ms a window instead of ~40-70 ms (an eager GRU steps through Python)."""
    import tensorflow as tf

    spec = tf.TensorSpec([None, *model.inputs[0].shape[1:]], model.inputs[0].dtype)

    @tf.autograph.experimental.do_not_convert
    def call(x: Any) -> Any:
        return model(x, training=False)

    graph = tf.function(call, input_signature=[spec])

    def run(x: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        return np.asarray(graph(x), dtype=np.float32)

    return run


def _litert_available() -> bool:
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        return False
    return True


class Classifier:
    """A loaded bundle. Build it with :func:`load_classifier`.

    Attributes:
      classes: class names in output order.
      thresholds: ``{name: threshold}`` calibrated on validation.
      captions: ``{name: caption text}`` from the bundle's class set
        (default :data:`pipeline.events.DEFAULT_CAPTIONS` or ``[<name>]``).
      urgent: ``{name: bool}``: classes people must not miss (default false).
      name, version: the bundle's identity.
      metadata: the bundle's ``metadata.json``.
      path: the bundle directory.
      runtime: ``"litert"`` or ``"keras"``.
    """

    def __init__(self, path: Path, meta: dict[str, Any], runtime: str, num_threads: int) -> None:
        self.path = path
        self.classes: tuple[str, ...] = meta.pop("_class_names")
        self.thresholds: dict[str, float] = meta.pop("_thresholds")
        self.captions: dict[str, str] = meta.pop("_captions")
        self.urgent: dict[str, bool] = meta.pop("_urgent")
        self.metadata = meta
        self.name = str(meta["name"])
        self.version = str(meta["version"])
        self.runtime = runtime
        self._num_threads = num_threads
        self._seconds_fn = None
        self._fn = self._load(TFLITE_NAME if runtime == "litert" else KERAS_NAME)

    def _load(self, filename: str) -> Any:
        file = self.path / filename
        if not file.is_file():
            raise BundleNotFoundError(f"classifier bundle {self.path} lacks {filename}; {_HOW_TO_GET}")
        if self.runtime == "litert":
            from pipeline.tflite import TFLiteModel

            try:
                return TFLiteModel(file, num_threads=self._num_threads)
            except ValueError as exc:
                raise BundleError(f"{file}: {exc}; {_HOW_TO_GET}") from None
        import keras

        try:
            model = keras.saving.load_model(file, compile=False)
        except Exception as exc:  # keras raises many types for a bad file
            raise BundleError(f"{file} could not be loaded by Keras ({exc}); {_HOW_TO_GET}") from None

        if keras.backend.backend() != "tensorflow":

            def run(x: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
                return np.asarray(model(x, training=False), dtype=np.float32)

            return run
        return _graph_call(model)

    @property
    def has_seconds(self) -> bool:
        """True when the bundle also scores each second (``predict_seconds``)."""
        return "seconds" in self.metadata

    def _check(self, windows: npt.ArrayLike) -> npt.NDArray[np.uint8]:
        x = np.asarray(windows)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or x.shape[1:] != (params.WINDOW_EMBEDDINGS, params.EMBEDDING_SIZE):
            raise ValueError(
                f"expected uint8 windows [B, {params.WINDOW_EMBEDDINGS}, {params.EMBEDDING_SIZE}]; got {x.shape}"
            )
        if x.dtype != np.uint8:
            if np.issubdtype(x.dtype, np.floating) or x.min(initial=0) < 0 or x.max(initial=0) > 255:
                raise ValueError(f"expected uint8 embeddings (the AudioSet format); got {x.dtype}")
            x = x.astype(np.uint8)
        return np.ascontiguousarray(x)

    def predict(self, windows: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Scores windows.

        Args:
          windows: uint8 ``[B, 10, 128]`` (or one ``[10, 128]`` window).

        Returns:
          float32 ``[B, len(classes)]`` in [0, 1], one independent score per class.
        """
        x = self._check(windows)
        if x.shape[0] == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        return np.clip(np.asarray(self._fn(x), dtype=np.float32), 0.0, 1.0)

    def predict_seconds(self, windows: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Per-second scores (only for bundles with ``has_seconds``).

        Args:
          windows: uint8 ``[B, 10, 128]``.

        Returns:
          float32 ``[B, 10, len(classes)]`` in [0, 1]: how much each second
          sounds like each class, given the other seconds of the window. The
          ``litert`` runtime runs the bundle's ``seconds.tflite``; ``keras``
          runs ``seconds.keras`` when the bundle has one (else the TFLite file).

        Raises:
          NotImplementedError: the bundle has no per-second model.
        """
        if not self.has_seconds:
            raise NotImplementedError(f"bundle {self.path} has no per-second model")
        if self._seconds_fn is None:
            sec = self.metadata["seconds"]
            keras_file = sec.get("keras")
            if self.runtime == "keras" and keras_file and (self.path / str(keras_file)).is_file():
                self._seconds_fn = self._load(str(keras_file))
            else:
                from pipeline.tflite import TFLiteModel

                file = self.path / str(sec.get("tflite", SECONDS_TFLITE_NAME))
                if not file.is_file():
                    raise BundleNotFoundError(f"classifier bundle {self.path} lacks {file.name}; {_HOW_TO_GET}")
                try:
                    self._seconds_fn = TFLiteModel(file, num_threads=self._num_threads)
                except ValueError as exc:
                    raise BundleError(f"{file}: {exc}; {_HOW_TO_GET}") from None
        x = self._check(windows)
        if x.shape[0] == 0:
            return np.zeros((0, params.WINDOW_EMBEDDINGS, len(self.classes)), np.float32)
        return np.clip(np.asarray(self._seconds_fn(x), dtype=np.float32), 0.0, 1.0)

    def __repr__(self) -> str:
        return f"Classifier({self.name}@{self.version}, {self.runtime}, classes={self.classes})"


def load_classifier(
    path: str | os.PathLike | None = None, runtime: str = "auto", num_threads: int = 1
) -> Classifier:
    """Loads a classifier bundle.

    Args:
      path: the bundle directory, or the name of a shipped bundle (e.g.
        ``"audiocap-home"``); ``None`` loads :data:`DEFAULT_BUNDLE`.
      runtime: ``"litert"`` (the TFLite file, no TensorFlow), ``"keras"``
        (``model.keras`` with TensorFlow), or ``"auto"`` (litert when
        ``ai_edge_litert`` is installed, else keras).
      num_threads: LiteRT interpreter threads.

    Returns:
      A :class:`Classifier`.

    Raises:
      BundleNotFoundError: the bundle or a file is missing (a FileNotFoundError).
      BundleError: the bundle is malformed (a ValueError).
      ValueError: unknown runtime.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}; got {runtime!r}")
    bundle = resolve_bundle(path)
    meta = read_metadata(bundle)
    if runtime == "auto":
        runtime = "litert" if _litert_available() else "keras"
    clf = Classifier(bundle, meta, runtime, num_threads)
    _LOGGER.info("loaded classifier %s@%s from %s (%s)", clf.name, clf.version, bundle, runtime)
    return clf
