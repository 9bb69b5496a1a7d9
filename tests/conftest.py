"""Session fixtures shared by every test folder."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Tests import shared makers as `import helpers`; with --import-mode=importlib
# pytest does not put test folders on sys.path, so this conftest does.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import helpers  # noqa: E402


@pytest.fixture(scope="session")
def shared_dir():
    """../shared beside the checkout; tests that need it skip without it."""
    if not helpers.SHARED.is_dir():
        pytest.skip(f"real data not available: {helpers.SHARED} is absent")
    return helpers.SHARED


@pytest.fixture(scope="session")
def bal_train_dir(shared_dir):
    if not helpers.BAL_TRAIN.is_dir():
        pytest.skip(f"AudioSet bal_train tfrecords not found at {helpers.BAL_TRAIN}")
    return helpers.BAL_TRAIN


@pytest.fixture(scope="session")
def pca_path(shared_dir):
    if not helpers.PCA_PATH.is_file():
        pytest.skip(f"VGGish PCA parameters not found at {helpers.PCA_PATH}")
    return helpers.PCA_PATH


@pytest.fixture(scope="session")
def vggish_weights():
    """Seeded random weights with the published VGGish names and shapes."""
    return helpers.random_vggish_weights(seed=0)


@pytest.fixture(scope="session")
def vggish_ckpt(vggish_weights, tmp_path_factory):
    """A V1 single-file checkpoint like the released vggish_model.ckpt."""
    return helpers.write_checkpoint(
        vggish_weights, tmp_path_factory.mktemp("vggish_v1") / "vggish_model.ckpt", version=1
    )


@pytest.fixture(scope="session")
def vggish_model(vggish_ckpt):
    """The random-weight VGGish loaded through the real checkpoint loader."""
    from pipeline.vggish import load_vggish

    return load_vggish(str(vggish_ckpt))


@pytest.fixture(scope="session")
def vggish_tflite(vggish_model, tmp_path_factory):
    """The random-weight VGGish exported to TFLite: {'float32': path, 'int8': path}."""
    from pipeline.vggish import export_tflite

    out = tmp_path_factory.mktemp("vggish_tflite")
    return {q: export_tflite(vggish_model, out / f"vggish_{q}.tflite", q) for q in ("float32", "int8")}
