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
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline import params

_LOGGER = logging.getLogger(__name__)

LOSSES = ("binary", "categorical", "sparse")
"""binary: sigmoid + binary cross-entropy; categorical / sparse: softmax + (sparse) categorical CE."""
MODEL_NAMES = ("paper_cnn", "paper_dense", "attention_mil", "mean_mlp")

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

    def head(n: int, name: str) -> tuple[Any, Any]:
        p = keras.layers.Dense(n, activation="sigmoid", name=f"{name}_seconds")(h)
        a = keras.layers.Dense(n, name=f"{name}_attention_logits")(h)
        a = keras.layers.Softmax(axis=1, name=f"{name}_attention")(a)
        m = keras.layers.Multiply(name=f"{name}_weighted")([p, a])
        s = keras.layers.GlobalAveragePooling1D(name=f"{name}_mean")(m)
        s = keras.layers.Rescaling(float(params.WINDOW_EMBEDDINGS), name=name)(s)
        return s, p

    classes, seconds = head(num_classes, "classes")
    outputs = {"classes": classes, "seconds": seconds}
    if num_aux:
        outputs["audioset"] = head(num_aux, "audioset")[0]
    return keras.Model(inp, outputs, name="attention_mil")


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


def build(name: str, **kwargs: Any) -> Any:
    """Builds a model by name (``MODEL_NAMES``) with its keyword arguments."""
    fns = {"paper_cnn": paper_cnn, "paper_dense": paper_dense, "attention_mil": attention_mil, "mean_mlp": mean_mlp}
    if name not in fns:
        raise ValueError(f"unknown model {name!r}; choose one of {MODEL_NAMES}")
    return fns[name](**kwargs)
