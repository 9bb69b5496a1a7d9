"""Keeps TensorFlow's and LiteRT's native start-up chatter out of our logs.

TensorFlow, absl and LiteRT print from C++ straight to file descriptor 2 —
``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.``, absl's
``I0000 …] oneDNN custom operations are on``, a failed ``cuInit`` on a box
without a GPU — where no Python logging setting reaches them, and none of it
tells an operator anything. :func:`native_stderr` points descriptor 2 at a
temporary file for the few calls that print such lines (importing
TensorFlow, creating an interpreter), then writes back every line that is not
known chatter, in order: Python's own log lines from that moment, and any
native warning or error we do not recognise, arrive as before.

With debug logging on (``audiocapd --debug``, ``audiocap-train --debug``)
nothing is captured and every native line goes through as printed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from typing import Any, Iterator

_LOGGER = logging.getLogger(__name__)

CHATTER = re.compile(
    r"^(?:"
    r"INFO: "  # TFLite's minimal logger: the XNNPACK delegate, "Initialized TensorFlow Lite runtime"
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"
    r"|[IW]\d{4} [\d:.]+\s+\d+ \S+:\d+\] "  # absl/glog INFO and WARNING lines (oneDNN, cudart stub, ...)
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.$"
    r"|E\d{4} [\d:.]+\s+\d+ \S+:\d+\] failed call to cuInit"  # no GPU on this box: not an error here
    r")"
)
"""A line of native start-up chatter: dropped unless debug logging is on."""


def debugging() -> bool:
    """Whether debug logging is on (then native lines pass untouched)."""
    return logging.getLogger("pipeline").isEnabledFor(logging.DEBUG)


@contextlib.contextmanager
def native_stderr() -> Iterator[None]:
    """Captures file descriptor 2 for the block; afterwards writes back every
    line that :data:`CHATTER` does not match (also when the block raises)."""
    if debugging():
        yield
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().splitlines(keepends=True)
                    if not CHATTER.match(line.decode("utf-8", "replace"))]
            if kept:
                os.write(2, b"".join(kept))


_tensorflow: Any = None


def import_tensorflow(start_runtime: bool = True) -> Any:
    """Imports TensorFlow (and lets it look for devices) without its chatter;
    returns the module. Its Python loggers keep only errors unless debugging.

    ``start_runtime=False`` scans the devices (cuInit's line) but leaves the
    eager runtime unstarted, for a caller that must configure it first:
    ``MultiWorkerMirroredStrategy`` sets up collective ops, which TensorFlow
    accepts only before its runtime starts. That caller starts it inside
    :func:`native_stderr` (the CPU feature line is printed then)."""
    global _tensorflow
    if _tensorflow is None:
        with native_stderr():
            import tensorflow as tf

            tf.config.list_physical_devices("CPU")  # the device scan prints (cuInit) once
            if start_runtime:
                tf.config.list_logical_devices("CPU")  # starts the runtime (its CPU feature line)
        if not debugging():
            for name in ("tensorflow", "absl"):
                logging.getLogger(name).setLevel(logging.ERROR)
        _tensorflow = tf
    return _tensorflow
