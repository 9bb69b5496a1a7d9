"""A process's memory from /proc/<pid>/status, for the benches."""

from __future__ import annotations


def status_mib(field: str, pid: int | str = "self") -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak of this address space: a child's own,
    nothing of the parent that started it) in MiB; NaN where /proc lacks it."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")
