"""PCA + 8-bit quantisation against the released parameters and reference outputs."""

import hashlib

import numpy as np
import pytest

import helpers
from pipeline.postprocess import PCAParamsError, Postprocessor
from pipeline import params


@pytest.fixture(scope="module")
def reference(shared_dir):
    return helpers.load_reference("postprocess_reference.npz")


def test_shared_pca_file_is_the_release(pca_path):
    assert hashlib.sha256(pca_path.read_bytes()).hexdigest() == params.PCA_PARAMS_SHA256


def test_matches_reference(pca_path, reference):
    post = Postprocessor(pca_path)
    for case in reference["case_ids"]:
        got = post.postprocess(reference[f"{case}_input"])
        want = reference[f"{case}_output"]
        assert got.dtype == np.uint8 and got.shape == want.shape
        diff = np.abs(got.astype(int) - want.astype(int))
        # Only a value lying exactly on a quantisation step may differ, by one.
        assert diff.max() <= 1, f"case {case}"
        if diff.any():
            x = reference[f"{case}_input"].astype(np.float64)
            with np.load(pca_path) as d:
                pca = (x - d["pca_means"].reshape(1, -1)) @ d["pca_eigen_vectors"].T
            steps = (np.clip(pca, -2, 2) + 2) * (255 / 4)
            on_step = np.abs(steps - np.round(steps)) < 1e-9
            assert np.all(on_step[diff > 0]), f"case {case}: mismatch off a quantisation step"


def test_truncates_and_clips(pca_path, tmp_path):
    # Identity PCA with zero mean: the quantiser alone.
    ident = tmp_path / "ident.npz"
    np.savez(ident, pca_eigen_vectors=np.eye(128), pca_means=np.zeros(128))
    post = Postprocessor(ident)
    x = np.zeros((1, 128))
    x[0, :5] = [-5.0, -2.0, 0.0, 0.999 * 4 / 255 - 2, 5.0]
    out = post.postprocess(x)[0, :5]
    assert list(out) == [0, 0, 127, 0, 255]  # 127.5 truncates to 127; just below step 1 stays 0


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"pca_means": np.zeros(128)}, "'pca_eigen_vectors' is missing"),
        ({"pca_eigen_vectors": np.eye(64), "pca_means": np.zeros(128)}, r"\(64, 64\)"),
        ({"pca_eigen_vectors": np.eye(128), "pca_means": np.zeros(12)}, r"'pca_means' is float64 \(12,\)"),
    ],
)
def test_malformed_file_names_file_arrays_and_source(tmp_path, arrays, match):
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    with pytest.raises(PCAParamsError, match=match) as err:
        Postprocessor(bad)
    msg = str(err.value)
    assert str(bad) in msg and "vggish_pca_params.npz" in msg and "pca_eigen_vectors" in msg


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(PCAParamsError, match="not found") as err:
        Postprocessor(tmp_path / "nope.npz")
    assert "python -m pipeline.assets pca" in str(err.value)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(PCAParamsError, match="not a readable .npz"):
        Postprocessor(junk)


def test_wrong_input_shape(pca_path):
    with pytest.raises(ValueError, match=r"\[N, 128\]"):
        Postprocessor(pca_path).postprocess(np.zeros((3, 64)))
