"""Fixture makers shared by the tests: audio, a random-weight VGGish, shared data.

Nothing here is downloaded: audio is synthesised, VGGish weights are seeded
random numbers with the published names and shapes, written by our own
checkpoint writer (``tf.raw_ops.Save`` for the V1 single-file format,
``tf.raw_ops.SaveV2`` for V2).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AUDIOCAP_SHARED", REPO.parent / "shared"))
BAL_TRAIN = SHARED / "audioset" / "audioset_v1_embeddings" / "bal_train"
PCA_PATH = SHARED / "vggish" / "vggish_pca_params.npz"
REFERENCE = SHARED / "reference"

# Published VGGish variables: (scope, kernel shape). Kept here on purpose, not
# imported from pipeline.vggish, so the tests check the loader against an
# independent statement of the architecture.
VGGISH_VARIABLES = (
    ("vggish/conv1", (3, 3, 1, 64)),
    ("vggish/conv2", (3, 3, 64, 128)),
    ("vggish/conv3/conv3_1", (3, 3, 128, 256)),
    ("vggish/conv3/conv3_2", (3, 3, 256, 256)),
    ("vggish/conv4/conv4_1", (3, 3, 256, 512)),
    ("vggish/conv4/conv4_2", (3, 3, 512, 512)),
    ("vggish/fc1/fc1_1", (12288, 4096)),
    ("vggish/fc1/fc1_2", (4096, 4096)),
    ("vggish/fc2", (4096, 128)),
)


def random_vggish_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """He-normal weights and small biases, seeded; float32."""
    rng = np.random.default_rng(seed)
    out = {}
    for scope, shape in VGGISH_VARIABLES:
        fan_in = int(np.prod(shape[:-1]))
        std = np.sqrt(2.0 / fan_in)
        out[f"{scope}/weights"] = (rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float32)
        out[f"{scope}/biases"] = (rng.standard_normal(shape[-1], dtype=np.float32) * 0.01).astype(np.float32)
    return out


def write_checkpoint(weights: dict[str, np.ndarray], prefix: Path, version: int = 1) -> Path:
    """Writes a TF1 checkpoint holding exactly ``weights`` under their names."""
    import tensorflow as tf

    names = sorted(weights)
    tensors = [tf.constant(weights[n]) for n in names]
    prefix.parent.mkdir(parents=True, exist_ok=True)
    if version == 1:
        tf.raw_ops.Save(filename=str(prefix), tensor_names=names, data=tensors)
    else:
        tf.raw_ops.SaveV2(
            prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors
        )
    return prefix


def write_hub_savedmodel(weights: dict[str, np.ndarray], out_dir: Path) -> Path:
    """Writes a SavedModel like the TF-Hub VGGish: variables carry the published
    names; its signature takes a waveform (unused by our loader)."""
    import tensorflow as tf

    module = tf.Module()
    module.weights = [tf.Variable(v, name=n, trainable=False) for n, v in sorted(weights.items())]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def embed(waveform):
        return tf.reduce_sum(waveform) + tf.add_n([tf.reduce_sum(w) for w in module.weights])

    module.embed = embed
    tf.saved_model.save(module, str(out_dir), signatures={"serving_default": embed})
    return out_dir


# --- An independent NumPy VGGish forward pass ---------------------------------

def _conv3x3_same(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x [N,H,W,C] float64, w [3,3,C,K] -> relu(conv + b) via explicit shifts."""
    n, h, wd, _ = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((n, h, wd, w.shape[3]))
    for dy in range(3):
        for dx in range(3):
            out += np.einsum("nhwc,ck->nhwk", padded[:, dy : dy + h, dx : dx + wd, :], w[dy, dx])
    return np.maximum(out + b, 0.0)


def _maxpool2(x: np.ndarray) -> np.ndarray:
    n, h, w, c = x.shape  # all even in VGGish
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def numpy_vggish(weights: dict[str, np.ndarray], examples: np.ndarray) -> np.ndarray:
    """float [N,96,64] -> float64 [N,128], written from the published description."""
    g = {k: v.astype(np.float64) for k, v in weights.items()}
    x = examples.astype(np.float64)[..., None]
    x = _maxpool2(_conv3x3_same(x, g["vggish/conv1/weights"], g["vggish/conv1/biases"]))
    x = _maxpool2(_conv3x3_same(x, g["vggish/conv2/weights"], g["vggish/conv2/biases"]))
    x = _conv3x3_same(x, g["vggish/conv3/conv3_1/weights"], g["vggish/conv3/conv3_1/biases"])
    x = _maxpool2(_conv3x3_same(x, g["vggish/conv3/conv3_2/weights"], g["vggish/conv3/conv3_2/biases"]))
    x = _conv3x3_same(x, g["vggish/conv4/conv4_1/weights"], g["vggish/conv4/conv4_1/biases"])
    x = _maxpool2(_conv3x3_same(x, g["vggish/conv4/conv4_2/weights"], g["vggish/conv4/conv4_2/biases"]))
    x = x.reshape(x.shape[0], -1)  # NHWC order, as TF-slim flattens
    x = np.maximum(x @ g["vggish/fc1/fc1_1/weights"] + g["vggish/fc1/fc1_1/biases"], 0.0)
    x = np.maximum(x @ g["vggish/fc1/fc1_2/weights"] + g["vggish/fc1/fc1_2/biases"], 0.0)
    return x @ g["vggish/fc2/weights"] + g["vggish/fc2/biases"]


# --- Audio ---------------------------------------------------------------------

def sine(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def chirp(seconds: float, rate: int, f0: float = 100.0, f1: float = 6000.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    k = (f1 - f0) / seconds
    return (0.4 * np.sin(2 * np.pi * (f0 * t + 0.5 * k * t * t))).astype(np.float32)


def noise(seconds: float, rate: int, seed: int = 0, amplitude: float = 0.2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (amplitude * rng.standard_normal(int(seconds * rate))).astype(np.float32)


def espeak_wav(text: str, out: Path, rate: int | None = None) -> Path:
    """Speech from espeak-ng (22.05 kHz), optionally converted with sox."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed; run scripts/setup")
    raw = out.with_suffix(".espeak.wav") if rate else out
    subprocess.run(["espeak-ng", "-w", str(raw), text], check=True, capture_output=True)
    if rate:
        subprocess.run(["sox", str(raw), "-r", str(rate), str(out)], check=True, capture_output=True)
    return out


def load_reference(name: str) -> dict[str, np.ndarray]:
    """A reference .npz from ../shared/reference as a dict; skips the test without it."""
    import pytest

    path = REFERENCE / name
    if not path.is_file():
        pytest.skip(f"reference outputs not found at {path}")
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def feed_blocks(process, x: np.ndarray, sizes) -> list:
    """Calls ``process`` on consecutive blocks of ``x`` whose sizes cycle through
    ``sizes``; returns the results in order."""
    out, pos, i = [], 0, 0
    sizes = [int(s) for s in sizes]
    while pos < x.shape[0]:
        n = sizes[i % len(sizes)]
        out.append(process(x[pos : pos + n]))
        pos += n
        i += 1
    return out
