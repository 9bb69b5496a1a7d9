"""The audiocap signal path shared by the daemon and the training package.

Nothing here imports TensorFlow at module level: the daemon on the LiteRT
runtime loads this package without it.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("audiocap")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
