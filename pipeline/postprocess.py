"""PCA whitening and 8-bit quantisation: raw VGGish embeddings -> AudioSet format.

The AudioSet release stores each 128-d embedding as bytes computed as
``(x - means) @ eigen_vectors.T``, clipped to [-2, 2], scaled to [0, 255] and
truncated to uint8. The PCA parameters are Google's ``vggish_pca_params.npz``;
users download it (``python -m pipeline.assets pca``), it is never bundled.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pipeline import params


class PCAParamsError(ValueError):
    """The PCA parameter file is missing or malformed."""


def _how_to_get(path: Path) -> str:
    return (
        f"get the VGGish release's vggish_pca_params.npz ({params.PCA_PARAMS_URL}), "
        f"e.g. with `python -m pipeline.assets pca --out {path}`, and point [model] pca "
        "(or --pca) at it"
    )


class Postprocessor:
    """Applies the released PCA and quantisation to raw VGGish embeddings.

    Args:
      pca_params_path: ``vggish_pca_params.npz`` holding ``pca_eigen_vectors``
        float ``[128, 128]`` and ``pca_means`` float ``[128]``.

    Raises:
      PCAParamsError: naming the file, what was expected and where to get it.
    """

    def __init__(self, pca_params_path: str | os.PathLike) -> None:
        path = Path(pca_params_path)
        self.path = path
        if not path.is_file():
            raise PCAParamsError(f"PCA parameters not found at {path}: {_how_to_get(path)}")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except Exception as exc:  # zip/npy errors of any kind
            raise PCAParamsError(
                f"PCA parameters at {path} are not a readable .npz file ({exc}): {_how_to_get(path)}"
            ) from None
        d = params.EMBEDDING_SIZE
        expected = {params.PCA_EIGEN_VECTORS_NAME: (d, d), params.PCA_MEANS_NAME: (d,)}
        for name, shape in expected.items():
            arr = arrays.get(name)
            if arr is None or arr.shape not in (shape, shape + (1,)) or not np.issubdtype(
                arr.dtype, np.floating
            ):
                got = "missing" if arr is None else f"{arr.dtype} {arr.shape}"
                raise PCAParamsError(
                    f"PCA parameters at {path} are malformed: expected float arrays "
                    f"'{params.PCA_EIGEN_VECTORS_NAME}' {(d, d)} and '{params.PCA_MEANS_NAME}' "
                    f"{(d,)}, but '{name}' is {got}: {_how_to_get(path)}"
                )
        self._eigen_vectors = arrays[params.PCA_EIGEN_VECTORS_NAME].astype(np.float64)
        self._means = arrays[params.PCA_MEANS_NAME].astype(np.float64).reshape(1, d)
        if not (np.all(np.isfinite(self._eigen_vectors)) and np.all(np.isfinite(self._means))):
            raise PCAParamsError(f"PCA parameters at {path} contain NaN or infinity: {_how_to_get(path)}")
        # Fold the mean into an offset so a batch costs one matrix product.
        self._projection = np.ascontiguousarray(self._eigen_vectors.T)
        self._offset = self._means @ self._projection

    def postprocess(self, embeddings: npt.ArrayLike) -> npt.NDArray[np.uint8]:
        """Raw embeddings float ``[N, 128]`` -> uint8 ``[N, 128]`` (AudioSet format).

        Raises:
          ValueError: if the input is not ``[N, 128]``.
        """
        x = np.asarray(embeddings)
        if x.ndim != 2 or x.shape[1] != params.EMBEDDING_SIZE:
            raise ValueError(
                f"postprocess expects embeddings of shape [N, {params.EMBEDDING_SIZE}]; got {x.shape}"
            )
        pca = x.astype(np.float64) @ self._projection - self._offset
        clipped = np.clip(pca, params.QUANTIZE_MIN_VAL, params.QUANTIZE_MAX_VAL)
        scaled = (clipped - params.QUANTIZE_MIN_VAL) * (
            params.QUANTIZED_LEVELS / (params.QUANTIZE_MAX_VAL - params.QUANTIZE_MIN_VAL)
        )
        return scaled.astype(np.uint8)
