"""Exit codes (sysexits.h) and the error type that carries one.

systemd's ``Restart=on-failure`` and ``RestartPreventExitStatus=`` read
these: a bad configuration (78) will not fix itself, an unavailable device
or hub (69) may.
"""

from __future__ import annotations

EX_DATAERR = 65
"""A file or replay failed mid-way (undecodable past a damaged region); the
captions up to there were delivered. Retrying would fail the same way."""
EX_NOINPUT = 66
"""An input file (recording, replay directory) does not exist."""
EX_UNAVAILABLE = 69
"""A device, PortAudio or a TF-Hub host is unavailable; a retry may succeed."""
EX_CANTCREAT = 73
"""An output file (subtitles) cannot be created."""
EX_TEMPFAIL = 75
"""A run that ended with its file or replay did not deliver every caption
(broker unreachable, queue full); those kept in the journal go at the next start."""
EX_CONFIG = 78
"""The configuration, or a model/PCA/classifier path it names, is wrong."""


class ExitError(RuntimeError):
    """A start-up failure with a one-line message and the exit code to leave with."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
