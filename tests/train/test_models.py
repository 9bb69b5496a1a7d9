"""The architectures: the paper's models as described, and the attention model's per-second scores."""

from __future__ import annotations

import numpy as np
import pytest

from train import models


def _layers(model):
    return [(l.__class__.__name__, l.output.shape[1:]) for l in model.layers]


def test_paper_cnn_is_the_described_stack():
    m = models.paper_cnn(loss="binary", normalise=True, last_pool=True)
    got = [(n, tuple(s)) for n, s in _layers(m) if n not in ("InputLayer",)]
    assert got == [
        ("Rescaling", (10, 128)),
        ("Reshape", (10, 128, 1)),
        ("Conv2D", (5, 62, 16)),  # 16 filters 1x6, strides (2, 2)
        ("MaxPooling2D", (4, 61, 16)),  # 2x2, stride 1
        ("Conv2D", (4, 61, 32)),  # 32 filters 1x6, SAME
        ("MaxPooling2D", (3, 60, 32)),
        ("Conv2D", (3, 60, 32)),
        ("MaxPooling2D", (2, 59, 32)),  # the optional last pooling
        ("Flatten", (2 * 59 * 32,)),
        ("Dense", (4,)),
    ]
    convs = [l for l in m.layers if l.__class__.__name__ == "Conv2D"]
    assert [c.kernel_size for c in convs] == [(1, 6)] * 3
    assert [c.strides for c in convs] == [(2, 2), (1, 1), (1, 1)]
    assert all(c.activation.__name__ == "relu" for c in convs)
    assert m.layers[1].scale == pytest.approx(1 / 255)
    assert m.layers[-1].activation.__name__ == "sigmoid"
    no_pool = models.paper_cnn(loss="categorical", normalise=False, last_pool=False)
    assert [n for n, _ in _layers(no_pool)].count("MaxPooling2D") == 2
    assert no_pool.layers[1].scale == 1.0 and no_pool.layers[-1].activation.__name__ == "softmax"


def test_paper_dense_reading():
    m = models.paper_dense(loss="sparse")
    dense = [l for l in m.layers if l.__class__.__name__ == "Dense"]
    assert [d.units for d in dense] == [10, 100, 1000, 4]
    assert [l for l in m.layers if l.__class__.__name__ == "Flatten"][0].output.shape[1:] == (1280,)


def test_attention_model_window_score_is_a_weighted_mean_of_seconds():
    m = models.attention_mil(num_aux=10, hidden=32)
    x = np.random.default_rng(0).integers(0, 256, (5, 10, 128), dtype=np.uint8)
    out = m.predict(x, verbose=0)
    assert out["classes"].shape == (5, 4) and out["seconds"].shape == (5, 10, 4) and out["audioset"].shape == (5, 10)
    sec = out["seconds"]
    assert np.all(out["classes"] <= sec.max(axis=1) + 1e-6) and np.all(out["classes"] >= sec.min(axis=1) - 1e-6)
    serve = models.serving_model(m, "classes")
    np.testing.assert_allclose(serve.predict(x, verbose=0), out["classes"], atol=1e-6)
    with pytest.raises(ValueError, match="unknown model"):
        models.build("resnet")
