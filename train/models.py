"""Classifier architectures. All take uint8 ``[B, 10, 128]`` embeddings.

Every model starts from the raw uint8 window and does its own scaling, so
the exported bundle's input is exactly what the daemon has (``input.scaling``
``x / 255`` in the metadata). Only built-in Keras layers are used: a saved
``.keras`` file loads without importing this package.

* :func:`paper_cnn` and :func:`paper_dense`: the paper's two models as
  described (see ``docs/training.md`` for the reading of the ambiguous parts).
* :func:`attention_mil`: our model. A shared per-second network (two 1-D
  convolutions over time give each second its neighbours' context) scores each
  second; attention pooling over the seconds gives the window's score. It also
  predicts all 527 AudioSet labels as an auxiliary task, and exposes the
  per-second scores (``[B, 10, 4]``) so the daemon can say *when* a sound was.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import numpy.typing as npt

from pipeline import params

_LOGGER = logging.getLogger(__name__)

LOSSES = ("binary", "categorical", "sparse")
"""binary: sigmoid + binary cross-entropy; categorical / sparse: softmax + (sparse) categorical CE."""

PAPER_DENSE_UNITS = (10, 100, 1000)
"""Our reading of the paper's "1280/10-100-1000": 1280 inputs, hidden layers of 10, 100, 1000."""
PAPER_CNN_KERNEL = (1, 6)


def _input(keras: Any) -> Any:
    return keras.Input((params.WINDOW_EMBEDDINGS, params.EMBEDDING_SIZE), dtype="uint8", name="embeddings")


def _head_activation(loss: str) -> str:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}; got {loss!r}")
    return "sigmoid" if loss == "binary" else "softmax"


def paper_cnn(
    num_classes: int = len(params.CLASS_NAMES),
    loss: str = "binary",
    normalise: bool = True,
    last_pool: bool = True,
) -> Any:
    """The paper's CNN on the 10x128 "image".

    Conv2D 16 (1x6) strides 2 ReLU -> MaxPool 2x2 s1 -> Conv2D 32 (1x6) SAME
    ReLU -> MaxPool 2x2 s1 -> Conv2D 32 (1x6) SAME ReLU -> [MaxPool 2x2 s1]
    -> Flatten -> Dense(num_classes) (sigmoid for BCE, softmax otherwise).

    Args:
      normalise: divide by 255 (the paper's normalisation) or feed 0..255.
      last_pool: keep the optional third pooling.

    Returns:
      Keras model, uint8 ``[B, 10, 128]`` -> float32 ``[B, num_classes]``.
    """
    import keras

    inp = _input(keras)
    x = keras.layers.Rescaling(1.0 / params.EMBEDDING_SCALE if normalise else 1.0, name="scale")(inp)
    x = keras.layers.Reshape((params.WINDOW_EMBEDDINGS, params.EMBEDDING_SIZE, 1))(x)
    x = keras.layers.Conv2D(16, PAPER_CNN_KERNEL, strides=(2, 2), activation="relu")(x)
    x = keras.layers.MaxPooling2D((2, 2), strides=1)(x)
    x = keras.layers.Conv2D(32, PAPER_CNN_KERNEL, strides=1, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D((2, 2), strides=1)(x)
    x = keras.layers.Conv2D(32, PAPER_CNN_KERNEL, strides=1, padding="same", activation="relu")(x)
    if last_pool:
        x = keras.layers.MaxPooling2D((2, 2), strides=1)(x)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(num_classes, activation=_head_activation(loss), name="classes")(x)
    return keras.Model(inp, out, name="paper_cnn")


def paper_dense(
    num_classes: int = len(params.CLASS_NAMES), loss: str = "binary", normalise: bool = True
) -> Any:
    """The paper's dense net: flatten to 1280, ReLU layers of 10, 100, 1000 units, output.

    Returns:
      Keras model, uint8 ``[B, 10, 128]`` -> float32 ``[B, num_classes]``.
    """
    import keras

    inp = _input(keras)
    x = keras.layers.Rescaling(1.0 / params.EMBEDDING_SCALE if normalise else 1.0, name="scale")(inp)
    x = keras.layers.Flatten()(x)
    for units in PAPER_DENSE_UNITS:
        x = keras.layers.Dense(units, activation="relu")(x)
    out = keras.layers.Dense(num_classes, activation=_head_activation(loss), name="classes")(x)
    return keras.Model(inp, out, name="paper_dense")


def _standardise(keras: Any, inp: Any, mean: npt.NDArray | None, var: npt.NDArray | None) -> Any:
    """uint8 -> x/255 -> per-dimension standardisation with training statistics."""
    x = keras.layers.Rescaling(1.0 / params.EMBEDDING_SCALE, name="scale")(inp)
    if mean is None or var is None:
        mean = np.full(params.EMBEDDING_SIZE, 0.5, np.float32)
        var = np.full(params.EMBEDDING_SIZE, 1.0 / 12.0, np.float32)
    return keras.layers.Normalization(axis=-1, mean=np.asarray(mean), variance=np.asarray(var), name="standardise")(x)


def input_statistics(x: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Per-dimension mean and variance of ``x / 255``, float32 ``[128]`` each."""
    f = x.reshape(-1, x.shape[-1]).astype(np.float32) / params.EMBEDDING_SCALE
    return f.mean(axis=0), np.maximum(f.var(axis=0), 1e-6)


def _mil_head(keras: Any, h: Any, n: int, name: str) -> tuple[Any, Any]:
    """Per-second sigmoid scores and their attention-weighted mean over time.

    Returns ``(window [B, n], seconds [B, 10, n])``; the window score is a
    convex combination of the second scores, so it lies within their range.
    """
    p = keras.layers.Dense(n, activation="sigmoid", name=f"{name}_seconds")(h)
    a = keras.layers.Dense(n, name=f"{name}_attention_logits")(h)
    a = keras.layers.Softmax(axis=1, name=f"{name}_attention")(a)
    m = keras.layers.Multiply(name=f"{name}_weighted")([p, a])
    s = keras.layers.GlobalAveragePooling1D(name=f"{name}_mean")(m)
    return keras.layers.Rescaling(float(params.WINDOW_EMBEDDINGS), name=name)(s), p


def _mil_model(keras: Any, inp: Any, h: Any, num_classes: int, num_aux: int, name: str) -> Any:
    """The model with ``classes``/``seconds`` (and ``audioset`` if ``num_aux``) heads over features ``h``."""
    classes, seconds = _mil_head(keras, h, num_classes, "classes")
    outputs = {"classes": classes, "seconds": seconds}
    if num_aux:
        outputs["audioset"] = _mil_head(keras, h, num_aux, "audioset")[0]
    return keras.Model(inp, outputs, name=name)

def attention_mil(
    num_classes: int = len(params.CLASS_NAMES),
    num_aux: int = params.AUDIOSET_NUM_LABELS,
    hidden: int = 512,
    dropout: float = 0.3,
    context: int = 3,
    mean: npt.NDArray | None = None,
    var: npt.NDArray | None = None,
) -> Any:
    """Per-second scores with attention pooling, plus the 527 AudioSet labels.

    Each second: standardise -> Conv1D(hidden, context) ReLU -> dropout ->
    Conv1D(hidden, 1) ReLU -> dropout -> per head, a sigmoid score and an
    attention logit per class; the window score is the attention-weighted mean
    of the second scores (softmax over time), so it lies in [0, 1].

    Args:
      num_aux: auxiliary AudioSet labels (0 to leave the head out).
      hidden: units per second.
      context: seconds seen by the first layer (odd).
      mean, var: input statistics (``[128]``) from :func:`input_statistics`.

    Returns:
      Keras model, uint8 ``[B, 10, 128]`` -> dict ``classes`` [B, C],
      ``seconds`` [B, 10, C] and (if ``num_aux``) ``audioset`` [B, num_aux].
    """
    import keras

    inp = _input(keras)
    x = _standardise(keras, inp, mean, var)
    x = keras.layers.Conv1D(hidden, context, padding="same", activation="relu", name="context")(x)
    x = keras.layers.Dropout(dropout)(x)
    x = keras.layers.Conv1D(hidden, 1, activation="relu", name="second")(x)
    h = keras.layers.Dropout(dropout)(x)

    return _mil_model(keras, inp, h, num_classes, num_aux, "attention_mil")


def stream_gru(
    num_classes: int = len(params.CLASS_NAMES),
    num_aux: int = params.AUDIOSET_NUM_LABELS,
    hidden: int = 128,
    dropout: float = 0.3,
    rnn_units: int | None = None,
    context: int = 3,
    mean: npt.NDArray | None = None,
    var: npt.NDArray | None = None,
) -> Any:
    """The stream model: per-second scores that use the window's past and near future.

    Each second: standardise -> Conv1D(hidden, context) ReLU -> dropout ->
    a bidirectional GRU over the 10 positions (``rnn_units`` per direction,
    unrolled: the window is always 10 long and the unrolled cell converts to
    TFLite builtin ops) -> dropout -> a sigmoid score per second. Position
    ``9 - L`` sees 9 - L seconds of past and L of future, so one model serves
    every look-ahead L (trained on windows cut anywhere in a stream of scenes,
    see ``train.fit``). The window score is the attention-weighted mean of the
    second scores (as :func:`attention_mil`), and an attention head over the
    same features predicts the 527 AudioSet labels.

    Args:
      num_aux: auxiliary AudioSet labels (0 to leave the head out).
      hidden: units of the per-second convolution.
      rnn_units: GRU units per direction (default ``hidden // 2``).
      context: seconds seen by the convolution (odd).
      mean, var: input statistics (``[128]``) from :func:`input_statistics`.

    Returns:
      Keras model, uint8 ``[B, 10, 128]`` -> dict ``classes`` [B, C],
      ``seconds`` [B, 10, C] and (if ``num_aux``) ``audioset`` [B, num_aux].
    """
    import keras

    inp = _input(keras)
    x = _standardise(keras, inp, mean, var)
    x = keras.layers.Conv1D(hidden, context, padding="same", activation="relu", name="context")(x)
    x = keras.layers.Dropout(dropout)(x)
    gru = keras.layers.GRU(rnn_units or max(hidden // 2, 1), return_sequences=True, unroll=True)
    x = keras.layers.Bidirectional(gru, name="temporal")(x)
    h = keras.layers.Dropout(dropout)(x)
    return _mil_model(keras, inp, h, num_classes, num_aux, "stream_gru")


def mean_mlp(
    num_classes: int = len(params.CLASS_NAMES),
    hidden: int = 256,
    dropout: float = 0.3,
    mean: npt.NDArray | None = None,
    var: npt.NDArray | None = None,
) -> Any:
    """A baseline: the mean and max of the 10 seconds -> MLP -> sigmoid."""
    import keras

    inp = _input(keras)
    x = _standardise(keras, inp, mean, var)
    x = keras.layers.Concatenate()([keras.layers.GlobalAveragePooling1D()(x), keras.layers.GlobalMaxPooling1D()(x)])
    x = keras.layers.Dense(hidden, activation="relu")(x)
    x = keras.layers.Dropout(dropout)(x)
    out = keras.layers.Dense(num_classes, activation="sigmoid", name="classes")(x)
    return keras.Model(inp, out, name="mean_mlp")


def serving_model(model: Any, output: str = "classes", name: str | None = None) -> Any:
    """A single-output view of ``model`` (shares its weights): uint8 [B,10,128] -> output."""
    import keras

    outs = model.outputs
    if isinstance(model.output, dict):
        out = model.output[output]
    elif len(outs) == 1:
        if output != "classes":
            raise ValueError(f"{model.name} has no {output!r} output")
        out = outs[0]
    else:
        names = [o.name.split("/")[0] for o in outs]
        out = outs[names.index(output)]
    return keras.Model(model.inputs[0], out, name=name or f"{model.name}_{output}")


@dataclass(frozen=True)
class Hyper:
    """What a builder may take from the training configuration."""

    loss: str = "binary"
    normalise: bool = True
    last_pool: bool = True
    hidden: int = 512
    dropout: float = 0.3
    mean: npt.NDArray | None = None
    var: npt.NDArray | None = None


@dataclass(frozen=True)
class Recipe:
    """An architecture and how it trains: the one place ``train.fit`` asks.

    Attributes:
      build: ``(num_classes, num_aux, Hyper) -> keras.Model`` (``num_aux`` is 0
        unless ``aux``).
      summary: one line for ``--help`` and the docs.
      losses: the ``--loss`` values it takes (sigmoid/BCE or softmax).
      input_stats: needs the training side's input statistics (``Hyper.mean/var``).
      aux: has the 527-label auxiliary output ``audioset`` (``--aux-weight``).
      seconds: has a per-second output ``seconds`` ``[B, 10, C]`` (exported as
        ``seconds.tflite``/``seconds.keras``).
      scenes: trains on windows cut from synthetic scenes (``train.scenes``)
        with per-second targets, besides the aligned clips.
    """

    build: Callable[[int, int, Hyper], Any]
    summary: str
    losses: tuple[str, ...] = ("binary",)
    input_stats: bool = False
    aux: bool = False
    seconds: bool = False
    scenes: bool = False

    @property
    def dict_outputs(self) -> bool:
        """The model returns a dict of named outputs (``classes`` and more)."""
        return self.aux or self.seconds

    def trained_outputs(self, aux_weight: float) -> dict[str, float]:
        """``{output: loss weight}`` of the outputs that carry a loss."""
        out = {"classes": 1.0}
        if self.scenes:
            out["seconds"] = 1.0
        if self.aux and aux_weight > 0:
            out["audioset"] = float(aux_weight)
        return out


RECIPES: dict[str, Recipe] = {
    "paper_cnn": Recipe(
        lambda n, _, hp: paper_cnn(n, hp.loss, hp.normalise, hp.last_pool),
        "the paper's CNN on the 10x128 window", losses=LOSSES),
    "paper_dense": Recipe(
        lambda n, _, hp: paper_dense(n, hp.loss, hp.normalise),
        "the paper's 1280/10-100-1000 dense net", losses=LOSSES),
    "attention_mil": Recipe(
        lambda n, k, hp: attention_mil(n, k, hidden=hp.hidden, dropout=hp.dropout, mean=hp.mean, var=hp.var),
        "per-second network with attention pooling, trained on clips", input_stats=True, aux=True, seconds=True),
    "attention_mil_scenes": Recipe(
        lambda n, k, hp: attention_mil(n, k, hidden=hp.hidden, dropout=hp.dropout, mean=hp.mean, var=hp.var),
        "attention_mil trained on synthetic scenes too: its window score learns to rise when a sound fills only "
        "the last seconds of the window", input_stats=True, aux=True, seconds=True, scenes=True),
    "mean_mlp": Recipe(
        lambda n, _, hp: mean_mlp(n, hidden=hp.hidden, dropout=hp.dropout, mean=hp.mean, var=hp.var),
        "mean and max over the seconds, one hidden layer", input_stats=True),
    "stream_gru": Recipe(
        lambda n, k, hp: stream_gru(n, k, hidden=hp.hidden, dropout=hp.dropout, mean=hp.mean, var=hp.var),
        "Conv1D + bidirectional GRU per-second scores, trained on synthetic scenes",
        input_stats=True, aux=True, seconds=True, scenes=True),
}
"""Every architecture ``audiocap-train fit --model`` knows, with its training recipe."""

MODEL_NAMES = tuple(RECIPES)


def recipe(name: str) -> Recipe:
    """The recipe of ``name``; ValueError naming the choices otherwise."""
    if name not in RECIPES:
        raise ValueError(f"unknown model {name!r}; choose one of {MODEL_NAMES}")
    return RECIPES[name]


def build(name: str, num_classes: int = len(params.CLASS_NAMES), num_aux: int = 0, hyper: Hyper | None = None) -> Any:
    """Builds a model by name (``MODEL_NAMES``), as its recipe does."""
    r = recipe(name)
    return r.build(num_classes, num_aux if r.aux else 0, hyper or Hyper())
