"""The systemd notify protocol (READY, STATUS, WATCHDOG, STOPPING) with the standard library.

Messages go as datagrams to ``$NOTIFY_SOCKET`` (a path, or an abstract socket
written ``@name``). Outside systemd the variable is unset and every call is a
no-op.
"""

from __future__ import annotations

import logging
import os
import time
import socket

_LOGGER = logging.getLogger(__name__)


class Notifier:
    """Talks to the service manager.

    Args:
      environ: the environment to read (default ``os.environ``).
    """

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        self._addr = "\0" + addr[1:] if addr.startswith("@") else addr
        self._sock: socket.socket | None = None
        self._failed = False
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_s: float | None = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1e6

    @property
    def enabled(self) -> bool:
        """Whether a notify socket was given."""
        return bool(self._addr)

    def notify(self, message: str) -> bool:
        """Sends ``message`` (``KEY=value`` lines); returns whether it was sent."""
        if not self._addr or self._failed:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode("utf-8"), self._addr)
            return True
        except OSError as exc:
            # Logged once: the service manager went away, nothing else to do.
            _LOGGER.warning("cannot notify the service manager at %s: %s", self._addr.replace("\0", "@"), exc)
            self._failed = True
            return False

    def ready(self, status: str = "") -> bool:
        """READY=1 (and a STATUS line)."""
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, status: str) -> bool:
        """STATUS=..."""
        return self.notify(f"STATUS={status}")

    def watchdog(self) -> bool:
        """WATCHDOG=1 (call every ``watchdog_s / 2``)."""
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str = "") -> bool:
        """STOPPING=1."""
        return self.notify("STOPPING=1" + (f"\nSTATUS={status}" if status else ""))

    def reloading(self, status: str = "") -> bool:
        """RELOADING=1 with MONOTONIC_USEC (the daemon re-executes itself; the new
        process sends READY=1 from the same PID)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}" + (f"\nSTATUS={status}" if status else ""))

    def close(self) -> None:
        """Closes the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
