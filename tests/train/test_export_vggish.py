"""audiocap-train export-vggish on the random-weight VGGish checkpoint (one run: each conversion is ~30 s)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.tflite import TFLiteModel
from train.__main__ import main


@pytest.mark.slow
def test_export_vggish_writes_three_models_that_agree(vggish_ckpt, vggish_model, tmp_path):
    out = tmp_path / "vggish"
    assert main(["export-vggish", "--source", str(vggish_ckpt), "--out", str(out)]) == 0
    assert (out / "vggish_savedmodel" / "saved_model.pb").is_file()
    f32, i8 = out / "vggish_f32.tflite", out / "vggish_int8.tflite"
    assert f32.stat().st_size > 4 * 0.9 * 72e6 / 1  # float32 weights of VGGish (~72 M parameters)
    assert i8.stat().st_size < f32.stat().st_size / 3  # int8 weights
    x = np.random.default_rng(0).normal(0, 1, (3, 96, 64)).astype(np.float32)
    ref = vggish_model(x)
    got = TFLiteModel(f32)(x)
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())
    q = TFLiteModel(i8)(x)
    assert q.shape == (3, 128)
    assert np.corrcoef(q.ravel(), ref.ravel())[0, 1] > 0.99
    from pipeline.vggish import load_vggish

    again = load_vggish(str(out / "vggish_savedmodel"))
    np.testing.assert_allclose(again(x), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_export_vggish_missing_source_fails_cleanly(tmp_path, capsys):
    assert main(["export-vggish", "--source", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "o")]) == 2
