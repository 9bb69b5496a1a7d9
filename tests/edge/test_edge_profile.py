"""The edge profile installs and embeds audio on LiteRT with TensorFlow absent."""

import json
import subprocess

import numpy as np

import helpers

_EMBED_SCRIPT = """
import json, sys
import numpy as np
from pipeline.embedder import Embedder
from pipeline.postprocess import Postprocessor
from pipeline.runtime import load_embedding_model
vggish = load_embedding_model(sys.argv[1], runtime="litert")
emb = Embedder(vggish, Postprocessor(sys.argv[2]), 44100)
x = np.load(sys.argv[3])
out = np.concatenate([emb.process(x[i:i + 4410]) for i in range(0, len(x), 4410)] + [emb.flush()])
np.save(sys.argv[4], out)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras", "numba", "resampy"))
print(json.dumps({"heavy_modules": heavy}))
"""


def test_tensorflow_is_absent_in_the_edge_profile(edge_python, edge_env):
    proc = subprocess.run([str(edge_python), "-c", "import tensorflow"], capture_output=True, text=True, env=edge_env)
    assert proc.returncode != 0 and "No module named 'tensorflow'" in proc.stderr
    ok = subprocess.run(
        [str(edge_python), "-c", "import ai_edge_litert.interpreter, paho.mqtt.client, sounddevice, pipeline, daemon"],
        capture_output=True, text=True, env=edge_env,
    )
    assert ok.returncode == 0, ok.stderr


def test_edge_embeddings_equal_litert_in_the_full_stack(edge_python, edge_env, vggish_tflite, pca_path, tmp_path):
    x = np.concatenate([helpers.chirp(2.5, 44100), helpers.noise(1.5, 44100, seed=4)])
    np.save(tmp_path / "x.npy", x)
    proc = subprocess.run(
        [str(edge_python), "-c", _EMBED_SCRIPT, str(vggish_tflite["int8"]), str(pca_path),
         str(tmp_path / "x.npy"), str(tmp_path / "out.npy")],
        capture_output=True, text=True, env=edge_env, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["heavy_modules"] == []
    edge = np.load(tmp_path / "out.npy")

    from pipeline.embedder import Embedder
    from pipeline.postprocess import Postprocessor
    from pipeline.runtime import load_embedding_model

    here = Embedder(load_embedding_model(vggish_tflite["int8"], "litert"), Postprocessor(pca_path), 44100).embed(x)
    assert edge.shape == here.shape == (4, 128)
    np.testing.assert_array_equal(edge, here)
