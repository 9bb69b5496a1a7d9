"""A small LiteRT (TFLite) runner shared by the VGGish and classifier runtimes.

Uses ``ai_edge_litert`` (no TensorFlow import); falls back to
``tf.lite.Interpreter`` only where LiteRT is not installed. The interpreter is
created and its tensors allocated at once, inside :func:`pipeline.quiet.native_stderr`:
that is when LiteRT prints its XNNPACK line, which stays out of the log.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pipeline.quiet import native_stderr


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - only without ai-edge-litert
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    return Interpreter


class TFLiteModel:
    """Runs a single-input, single-output ``.tflite`` model on batches.

    The batch dimension is resized on demand (and kept), so a steady stream of
    equal batch sizes costs one allocation.

    Args:
      path: the ``.tflite`` file.
      num_threads: interpreter threads (1 is best for latency on small boxes).

    Raises:
      FileNotFoundError: naming the path.
      ValueError: if the file is not a valid TFLite model.
    """

    def __init__(self, path: str | os.PathLike, num_threads: int = 1) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"TFLite model not found: {self.path}")
        try:
            with native_stderr():
                self._interp = _interpreter_class()(model_path=str(self.path), num_threads=num_threads)
                self._interp.allocate_tensors()
        except Exception as exc:
            raise ValueError(f"{self.path} is not a valid TFLite model: {exc}") from None
        inp = self._interp.get_input_details()
        out = self._interp.get_output_details()
        if len(inp) != 1 or len(out) != 1:
            raise ValueError(
                f"{self.path}: expected one input and one output, got {len(inp)} and {len(out)}"
            )
        self._in = inp[0]
        self._out_index = out[0]["index"]
        self.input_shape = tuple(int(d) for d in self._in["shape"][1:])
        self.input_dtype = np.dtype(self._in["dtype"])
        self._batch = int(self._in["shape"][0])

    def __call__(self, x: npt.ArrayLike) -> npt.NDArray:
        arr = np.ascontiguousarray(x, dtype=self.input_dtype)
        if arr.shape[1:] != self.input_shape:
            raise ValueError(
                f"{self.path.name} expects input [N, {', '.join(map(str, self.input_shape))}]; got {arr.shape}"
            )
        n = arr.shape[0]
        if n == 0:
            shape = self._interp.get_output_details()[0]["shape"][1:]
            return np.zeros((0, *shape), dtype=np.float32)
        if n != self._batch:
            self._interp.resize_tensor_input(self._in["index"], [n, *self.input_shape], strict=False)
            self._interp.allocate_tensors()
            self._batch = n
        self._interp.set_tensor(self._in["index"], arr)
        self._interp.invoke()
        return self._interp.get_tensor(self._out_index).copy()
