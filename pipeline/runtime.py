"""The two model runtimes behind one interface.

``tensorflow``: VGGish as Keras from a checkpoint, TF-Hub handle or SavedModel
(:func:`pipeline.vggish.load_vggish`). ``litert``: VGGish from a ``.tflite``
file (float32 or dynamic-range int8, written by ``audiocap-train
export-vggish``) run by the LiteRT interpreter; nothing on this path imports
TensorFlow, so the edge profile can leave it uninstalled.

Both return a callable mapping float32 ``[N, 96, 64]`` to float32 ``[N, 128]``.
"""

from __future__ import annotations

import os

from pipeline.embedder import EmbeddingFn

RUNTIMES = ("tensorflow", "litert")


class RuntimeMismatchError(ValueError):
    """A runtime and a model file do not fit together; the message says how to fix it."""


def check_runtime(runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise RuntimeMismatchError(f"unknown runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
    return runtime


def load_embedding_model(source: str | os.PathLike, runtime: str = "tensorflow", num_threads: int = 1) -> EmbeddingFn:
    """Loads VGGish for ``runtime``.

    Args:
      source: for ``tensorflow``, what :func:`pipeline.vggish.load_vggish`
        takes; for ``litert``, a ``.tflite`` file.
      runtime: ``tensorflow`` or ``litert``.
      num_threads: LiteRT interpreter threads.

    Raises:
      RuntimeMismatchError: the source does not suit the runtime.
      pipeline.vggish.VGGishLoadError: the weights could not be loaded.
    """
    src = os.fspath(source)
    if check_runtime(runtime) == "litert":
        if not src.endswith(".tflite"):
            raise RuntimeMismatchError(
                f"runtime 'litert' needs VGGish as a .tflite file, got {src!r}; make one on a machine "
                "with TensorFlow with `audiocap-train export-vggish --source SOURCE --out DIR` and set "
                "[model] vggish = \"DIR/vggish_int8.tflite\" (or --vggish)"
            )
        from pipeline.tflite import TFLiteModel
        from pipeline.vggish import VGGishLoadError

        try:
            return TFLiteModel(src, num_threads=num_threads)
        except (FileNotFoundError, ValueError) as exc:
            raise VGGishLoadError(
                f"cannot load the VGGish TFLite model: {exc}. Export one with "
                "`audiocap-train export-vggish --source SOURCE --out DIR`"
            ) from None
    from pipeline.quiet import import_tensorflow
    from pipeline.vggish import load_vggish

    import_tensorflow()  # before load_vggish imports it: without the native chatter
    return load_vggish(src)
