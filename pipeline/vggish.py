"""The VGGish network as Keras, its weight loaders and its exports.

Architecture (the published model): ``[N, 96, 64]`` -> ``[N, 96, 64, 1]`` ->
conv64 -> pool -> conv128 -> pool -> conv256, conv256 -> pool -> conv512,
conv512 -> pool -> flatten (NHWC) -> fc4096 -> fc4096 -> fc128 (no activation).
Convolutions are 3x3 stride 1 SAME with ReLU; pools 2x2 stride 2 SAME.

Weights come from (see :func:`load_vggish`):

* a TF1 checkpoint such as the released ``vggish_model.ckpt`` (V1 single file,
  or a V2 ``.index``/``.data`` pair), variables named ``vggish/conv1/weights``…;
* a TF-Hub handle or URL, or a local SavedModel directory, loaded with
  ``tensorflow_hub`` and read by the same variable names.

TensorFlow is imported inside the functions that need it, so importing this
module costs nothing on the LiteRT runtime.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import numpy.typing as npt

from pipeline import params

_LOGGER = logging.getLogger(__name__)

# (checkpoint scope, Keras layer name, kernel shape) in network order.
LAYERS: tuple[tuple[str, str, tuple[int, ...]], ...] = (
    ("vggish/conv1", "conv1", (3, 3, 1, 64)),
    ("vggish/conv2", "conv2", (3, 3, 64, 128)),
    ("vggish/conv3/conv3_1", "conv3_1", (3, 3, 128, 256)),
    ("vggish/conv3/conv3_2", "conv3_2", (3, 3, 256, 256)),
    ("vggish/conv4/conv4_1", "conv4_1", (3, 3, 256, 512)),
    ("vggish/conv4/conv4_2", "conv4_2", (3, 3, 512, 512)),
    ("vggish/fc1/fc1_1", "fc1_1", (12288, 4096)),
    ("vggish/fc1/fc1_2", "fc1_2", (4096, 4096)),
    ("vggish/fc2", "fc2", (4096, 128)),
)
"""The published variable names and shapes; each scope has ``weights`` and ``biases``."""

_POOL_AFTER = {"conv1", "conv2", "conv3_2", "conv4_2"}
_HUB_CONNECT_TIMEOUT_S = float(os.environ.get("AUDIOCAP_HUB_CONNECT_TIMEOUT", "3"))


class VGGishLoadError(RuntimeError):
    """The VGGish weights could not be loaded; the message says why and what to do."""


_HOW_TO_GET = (
    "download the VGGish weights on a machine with network access, either the TF1 "
    f"checkpoint ({params.VGGISH_CHECKPOINT_URL}, e.g. `python -m pipeline.assets vggish`) "
    f"or the TF-Hub model {params.DEFAULT_VGGISH_HANDLE} as a SavedModel directory, copy it "
    "here and set [model] vggish = \"/path/to/vggish_model.ckpt\" (or the SavedModel "
    "directory) in audiocap.toml, or pass --vggish PATH"
)


def build_vggish(name: str = "vggish") -> Any:
    """Builds the VGGish Keras model with uninitialised weights.

    Returns:
      A ``keras.Model`` mapping float32 ``[N, 96, 64]`` to float32 ``[N, 128]``.
    """
    import keras

    inputs = keras.Input(shape=(params.NUM_FRAMES, params.NUM_MEL_BINS), name="log_mel")
    x = keras.layers.Reshape((params.NUM_FRAMES, params.NUM_MEL_BINS, 1), name="to_image")(inputs)
    for scope, layer_name, shape in LAYERS:
        if layer_name.startswith("conv"):
            x = keras.layers.Conv2D(
                shape[3], (3, 3), strides=1, padding="same", activation="relu", name=layer_name
            )(x)
            if layer_name in _POOL_AFTER:
                x = keras.layers.MaxPooling2D(
                    (2, 2), strides=2, padding="same", name="pool" + layer_name[4]
                )(x)
        else:
            if layer_name == "fc1_1":
                x = keras.layers.Flatten(name="flatten")(x)
            activation = None if layer_name == "fc2" else "relu"
            x = keras.layers.Dense(shape[1], activation=activation, name=layer_name)(x)
    return keras.Model(inputs, x, name=name)


def _assign(model: Any, weights: dict[str, npt.NDArray], origin: str) -> None:
    """Copies ``{'vggish/conv1/weights': array, ...}`` into ``model``."""
    for scope, layer_name, shape in LAYERS:
        kernel = weights.get(f"{scope}/weights")
        bias = weights.get(f"{scope}/biases")
        for what, arr, want in ((f"{scope}/weights", kernel, shape), (f"{scope}/biases", bias, shape[-1:])):
            if arr is None:
                raise VGGishLoadError(
                    f"{origin} has no variable '{what}': it is not a VGGish model "
                    f"(expected the variables of the published VGGish). To fix it, {_HOW_TO_GET}"
                )
            if tuple(arr.shape) != want:
                raise VGGishLoadError(
                    f"{origin}: variable '{what}' has shape {tuple(arr.shape)}, expected {want}"
                )
        model.get_layer(layer_name).set_weights(
            [np.asarray(kernel, dtype=np.float32), np.asarray(bias, dtype=np.float32)]
        )


def read_checkpoint(prefix: str | os.PathLike) -> dict[str, npt.NDArray]:
    """Reads the VGGish variables from a TF1 checkpoint (V1 single file or V2).

    Args:
      prefix: the checkpoint prefix (``vggish_model.ckpt``), or a directory
        holding a ``checkpoint`` index file.

    Raises:
      VGGishLoadError: the checkpoint is missing or unreadable.
    """
    import tensorflow as tf

    path = str(prefix)
    if os.path.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            raise VGGishLoadError(f"no TF checkpoint in directory {path}; {_HOW_TO_GET}")
        path = latest
    try:
        reader = tf.train.load_checkpoint(path)
    except Exception as exc:  # NotFoundError, DataLossError, ...
        raise VGGishLoadError(
            f"cannot read the VGGish checkpoint {path}: {str(exc).splitlines()[0]}. To fix it, {_HOW_TO_GET}"
        ) from None
    out = {}
    for scope, _, _ in LAYERS:
        for leaf in ("weights", "biases"):
            name = f"{scope}/{leaf}"
            if reader.has_tensor(name):
                out[name] = reader.get_tensor(name)
    return out


def _iter_variables(obj: Any) -> Iterator[Any]:
    """Every ``tf.Variable`` reachable from a restored SavedModel object."""
    import tensorflow as tf

    seen: set[int] = set()
    stack = [obj]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, tf.Variable):
            yield node
            continue
        variables = getattr(node, "variables", None)
        if isinstance(variables, (list, tuple)):
            stack.extend(variables)
        children = getattr(node, "_trackable_children", None)
        if callable(children):
            try:
                stack.extend(children().values())
            except Exception:  # some trackables refuse outside their save context
                pass


def _hub_cache_path(handle: str) -> Path | None:
    """Where tensorflow_hub caches ``handle``, if it is there already."""
    root = os.environ.get("TFHUB_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "tfhub_modules")
    path = Path(root) / hashlib.sha1(handle.encode("utf8")).hexdigest()
    return path if (path / "saved_model.pb").is_file() else None


def _check_reachable(handle: str) -> None:
    """Fails at once, with what to do, when the hub host cannot be reached."""
    host = urllib.parse.urlparse(handle).hostname
    if not host:
        return
    try:
        with socket.create_connection((host, 443), timeout=_HUB_CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise VGGishLoadError(
            f"cannot download the VGGish model {handle}: {host} is unreachable ({exc}). "
            f"This machine seems offline. To fix it, {_HOW_TO_GET}"
        ) from None


def read_hub(handle: str) -> dict[str, npt.NDArray]:
    """Loads a TF-Hub handle/URL or a local SavedModel with ``tensorflow_hub`` and
    returns its VGGish variables by name.

    Raises:
      VGGishLoadError: unreachable hub (at once, not after a hang), a directory
        that is not a SavedModel, or a model without the VGGish variables.
    """
    import tensorflow_hub as hub

    target = handle
    if not os.path.isdir(handle):
        cached = _hub_cache_path(handle)
        if cached is not None:
            target = str(cached)
        else:
            _check_reachable(handle)
    elif not (Path(handle) / "saved_model.pb").is_file():
        raise VGGishLoadError(
            f"{handle} is a directory but not a SavedModel (no saved_model.pb); {_HOW_TO_GET}"
        )
    try:
        obj = hub.load(target)
    except Exception as exc:
        raise VGGishLoadError(
            f"tensorflow_hub could not load {handle}: {str(exc).splitlines()[0]}. To fix it, {_HOW_TO_GET}"
        ) from None
    out = {}
    for var in _iter_variables(obj):
        name = var.name.split(":")[0]
        if name.startswith("vggish/"):
            out[name] = var.numpy()
    return out


def _is_checkpoint(path: str) -> bool:
    return (
        os.path.isfile(path)
        or os.path.isfile(path + ".index")
        or (os.path.isdir(path) and os.path.isfile(os.path.join(path, "checkpoint")))
    )


@dataclass
class KerasVGGish:
    """A loaded VGGish: call it on float32 ``[N, 96, 64]`` to get float32 ``[N, 128]``.

    Attributes:
      model: the Keras model.
      source: where the weights came from.
    """

    model: Any
    source: str

    def __post_init__(self) -> None:
        import tensorflow as tf

        self._fn = tf.function(
            lambda x: self.model(x, training=False),
            input_signature=[
                tf.TensorSpec([None, params.NUM_FRAMES, params.NUM_MEL_BINS], tf.float32)
            ],
            reduce_retracing=True,
        )

    def __call__(self, examples: npt.ArrayLike) -> npt.NDArray[np.float32]:
        x = np.asarray(examples, dtype=np.float32)
        if x.ndim != 3 or x.shape[1:] != (params.NUM_FRAMES, params.NUM_MEL_BINS):
            raise ValueError(
                f"VGGish expects examples of shape [N, {params.NUM_FRAMES}, {params.NUM_MEL_BINS}]; got {x.shape}"
            )
        if x.shape[0] == 0:
            return np.zeros((0, params.EMBEDDING_SIZE), dtype=np.float32)
        return self._fn(x).numpy()

    def weights_by_name(self) -> dict[str, npt.NDArray[np.float32]]:
        """The weights under their published names (for export)."""
        out = {}
        for scope, layer_name, _ in LAYERS:
            kernel, bias = self.model.get_layer(layer_name).get_weights()
            out[f"{scope}/weights"] = kernel
            out[f"{scope}/biases"] = bias
        return out


def load_vggish(source: str | os.PathLike = params.DEFAULT_VGGISH_HANDLE) -> KerasVGGish:
    """Loads VGGish from a checkpoint, a TF-Hub handle/URL or a SavedModel directory.

    Args:
      source: a TF1 checkpoint prefix (``vggish_model.ckpt``, V1 or V2), a
        local SavedModel directory, or a TF-Hub handle/URL (default
        ``https://tfhub.dev/google/vggish/1``).

    Returns:
      A callable mapping float32 ``[N, 96, 64]`` to float32 ``[N, 128]`` raw
      embeddings (before PCA).

    Raises:
      VGGishLoadError: with the source that failed and how to fix it.
    """
    src = os.fspath(source)
    is_url = "://" in src
    if not is_url and src.endswith(".tflite"):
        raise VGGishLoadError(
            f"{src} is a TFLite file: it runs on the LiteRT runtime (--runtime litert), "
            "not through the Keras loader"
        )
    if not is_url and os.path.isdir(src) and os.path.isfile(os.path.join(src, "saved_model.pb")):
        weights = read_hub(src)
        origin = f"SavedModel {src}"
    elif not is_url and _is_checkpoint(src):
        weights = read_checkpoint(src)
        origin = f"checkpoint {src}"
    elif is_url or (not os.path.isabs(src) and src.count("/") >= 2 and not os.path.exists(src)):
        weights = read_hub(src)
        origin = f"TF-Hub model {src}"
    else:
        raise VGGishLoadError(f"VGGish weights not found at {src}. To fix it, {_HOW_TO_GET}")
    model = build_vggish()
    _assign(model, weights, origin)
    _LOGGER.info("loaded VGGish from %s", origin)
    return KerasVGGish(model=model, source=src)


def export_savedmodel(vggish: KerasVGGish, out_dir: str | os.PathLike) -> Path:
    """Writes ``vggish`` as a SavedModel whose variables keep the published names.

    The result loads again with :func:`load_vggish` (and ``tensorflow_hub``);
    its serving signature maps ``log_mel`` float32 ``[N, 96, 64]`` to
    ``embedding`` float32 ``[N, 128]``.
    """
    import tensorflow as tf

    weights = vggish.weights_by_name()
    module = tf.Module(name="vggish_export")
    module.vars = {
        name: tf.Variable(value, name=name, trainable=False) for name, value in weights.items()
    }
    @tf.function(input_signature=[tf.TensorSpec([None, params.NUM_FRAMES, params.NUM_MEL_BINS], tf.float32, name="log_mel")])
    def serve(log_mel):
        return {"embedding": _graph_forward(module.vars, log_mel)}

    module.serve = serve
    out = Path(out_dir)
    tf.saved_model.save(module, str(out), signatures={"serving_default": serve})
    return out


def _graph_forward(v: dict[str, Any], log_mel: Any) -> Any:
    """The VGGish forward pass in plain TF ops over named variables."""
    import tensorflow as tf

    x = tf.reshape(log_mel, [-1, params.NUM_FRAMES, params.NUM_MEL_BINS, 1])
    for scope, layer_name, _ in LAYERS:
        w, b = v[f"{scope}/weights"], v[f"{scope}/biases"]
        if layer_name.startswith("conv"):
            x = tf.nn.relu(tf.nn.conv2d(x, w, strides=1, padding="SAME") + b)
            if layer_name in _POOL_AFTER:
                x = tf.nn.max_pool2d(x, ksize=2, strides=2, padding="SAME")
        else:
            if layer_name == "fc1_1":
                x = tf.reshape(x, [-1, w.shape[0]])
            x = tf.matmul(x, w) + b
            if layer_name != "fc2":
                x = tf.nn.relu(x)
    return x


QUANTIZATIONS = ("float32", "int8", "int8-full")
"""``float32``; ``int8``: dynamic range (int8 weights, activations quantised
per inference by the kernels, no calibration); ``int8-full``: full integer
(static range: int8 weights and activations, ranges fixed from calibration
audio, float input and output)."""


def calibration_examples(audio: tuple[npt.ArrayLike, ...] = (), seed: int = 0) -> npt.NDArray[np.float32]:
    """Log-mel examples ``[N, 96, 64]`` to fix the activation ranges of a
    full-integer export: ``audio`` (16 kHz mono recordings, e.g. real ones the
    box will hear) plus a synthetic set spanning levels and spectra — tones,
    chords, chirps, white/pink/brown noise, clicks, amplitude-modulated noise
    and near silence, each at quiet, middle and loud levels."""
    from pipeline.frontend import waveform_to_examples

    rate, n = params.SAMPLE_RATE, 2 * params.EXAMPLE_SPAN_SAMPLES
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate
    white = rng.standard_normal(n)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.maximum(np.fft.rfftfreq(n, 1 / rate), 20.0)
    pink = np.fft.irfft(spectrum / np.sqrt(freqs), n)
    brown = np.fft.irfft(spectrum / freqs, n)
    clicks = np.zeros(n)
    clicks[rng.integers(0, n, 40)] = 1.0
    shapes = [
        np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 2500 * t) + np.sin(2 * np.pi * 150 * t),
        sum(np.sin(2 * np.pi * f * t) for f in (262, 330, 392, 523)),
        np.sin(2 * np.pi * (100 + 3500 * t / t[-1]) * t), white, pink, brown, clicks,
        white * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)), 1e-4 * white,
    ]
    signals = [s / (np.max(np.abs(s)) + 1e-12) * level for s in shapes for level in (0.02, 0.2, 0.9)]
    signals += [np.asarray(a, np.float64) for a in audio]
    return np.concatenate([waveform_to_examples(s.astype(np.float32), rate) for s in signals])


def export_tflite(
    vggish: KerasVGGish, out_path: str | os.PathLike, quantization: str = "float32",
    calibration: npt.NDArray[np.float32] | None = None,
) -> Path:
    """Converts ``vggish`` to a TFLite flatbuffer.

    Args:
      quantization: one of :data:`QUANTIZATIONS`.
      calibration: examples ``[N, 96, 64]`` for ``int8-full`` (default:
        :func:`calibration_examples` of the synthetic set alone).

    Returns:
      The written path. Its input is float32 ``[1, 96, 64]`` (resizable batch),
      its output float32 ``[1, 128]``, whatever the quantisation.
    """
    import tensorflow as tf

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}; got {quantization!r}")
    # Weights as constants: the converter then embeds them in the flatbuffer
    # (resource variables of a Keras model would be left out).
    consts = {name: tf.constant(value) for name, value in vggish.weights_by_name().items()}
    fn = tf.function(
        lambda log_mel: _graph_forward(consts, log_mel),
        input_signature=[tf.TensorSpec([1, params.NUM_FRAMES, params.NUM_MEL_BINS], tf.float32)],
    )
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()])
    if quantization != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "int8-full":
        examples = calibration_examples() if calibration is None else np.asarray(calibration, np.float32)
        converter.representative_dataset = lambda: ([examples[i : i + 1]] for i in range(examples.shape[0]))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    from pipeline.quiet import native_stderr

    with native_stderr():  # the converter's MLIR passes log to fd 2
        blob = converter.convert()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(blob)
    return out
