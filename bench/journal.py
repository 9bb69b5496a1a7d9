"""Benchmark of the MQTT write-ahead journal: what crash safety costs per caption message.

    python bench/journal.py                  # in a temporary folder under the current directory
    python bench/journal.py --dir /var/lib/audiocap --n 500

Runs the daemon's own :class:`daemon.sinks.journal.Journal` on the file
system of ``--dir`` (the journal's real home under systemd is
``/var/lib/audiocap``; ``/tmp`` may be a tmpfs where ``fsync`` is free) and
prints medians and p95, in microseconds per message:

* ``append``: one ``write(2)`` of a caption-sized line, what the caption
  thread pays (the line then survives a SIGKILL);
* ``append + fsync``: the same with an ``fsync`` per message before
  returning (what per-message durability would cost on the caller's thread);
* ``group commit``: a caption edge's two messages (event, then state)
  written back to back and covered by one ``fsync``, per message: what the
  daemon's syncer thread pays;
* ``ack``: marking a message delivered (a ``write(2)``, no ``fsync``);

and how long the running journal takes from a caption edge's append to its
``fsync`` (the window a power cut could lose).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo, not bench/daemon.py

from daemon.sinks.journal import SYNC_DELAY_S, Journal  # noqa: E402

PAYLOAD = json.dumps({"schema": 1, "event_id": "5c9b00c2191f4687979848169feca7ce", "type": "end", "label": "Speech",
                      "caption": "[Speech]", "score": 0.79, "start": "2026-11-23T22:56:20.837Z",
                      "end": "2026-11-23T22:56:23.718Z", "node": "kitchen", "source": "mic:default",
                      "model": "audiocap-4class@0.1"})


def _fs_type(path: Path) -> str:
    best, kind = "", "?"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and str(path).startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    except OSError:
        pass
    return kind


def _stats(name: str, samples_s: list[float]) -> None:
    us = sorted(x * 1e6 for x in samples_s)
    p95 = us[min(len(us) - 1, int(0.95 * len(us)))]
    print(f"| {name} | {statistics.median(us):.1f} | {p95:.1f} | {len(us)} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default=".", help="folder whose file system holds the journal (default: here)")
    p.add_argument("--n", type=int, default=300, help="messages per measurement")
    args = p.parse_args()
    base = Path(args.dir).resolve()
    with tempfile.TemporaryDirectory(prefix=".journal-bench-", dir=base) as d:
        path = Path(d) / "mqtt-spool.jsonl"
        print(f"journal on {base} ({_fs_type(base)}), {len(PAYLOAD)}-byte caption payload, {args.n} messages each\n")
        print("| operation | median µs/message | p95 µs | n |")
        print("| --- | --- | --- | --- |")

        j = Journal(path, sync_delay_s=1e9)  # no syncer: only the write
        j.open([])
        times, seqs = [], []
        for _ in range(args.n):
            t = time.perf_counter()
            seqs.append(j.append("audiocap/kitchen/events", PAYLOAD, False).seq)
            times.append(time.perf_counter() - t)
        _stats("append (write, no fsync)", times)
        times = []
        for s in seqs:
            t = time.perf_counter()
            j.ack(s)
            times.append(time.perf_counter() - t)
        _stats("ack", times)
        j.close()

        j = Journal(path, sync_delay_s=0)  # fsync inside every append
        j.open([])
        times = []
        for _ in range(args.n):
            t = time.perf_counter()
            j.append("audiocap/kitchen/events", PAYLOAD, False)
            times.append(time.perf_counter() - t)
        _stats("append + fsync per message", times)
        j.close()

        # Group commit as the syncer does it: event + state, one fsync for both.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        event = (json.dumps({"seq": 1, "t": 0.0, "topic": "audiocap/kitchen/events", "payload": PAYLOAD,
                             "retain": False}) + "\n").encode()
        state = (json.dumps({"seq": 2, "t": 0.0, "topic": "audiocap/kitchen/state/Speech", "payload": "OFF",
                             "retain": True}) + "\n").encode()
        times = []
        for _ in range(args.n // 2):
            t = time.perf_counter()
            os.write(fd, event)
            os.write(fd, state)
            os.fsync(fd)
            times.append((time.perf_counter() - t) / 2)
        os.close(fd)
        _stats("group commit (event + state, one fsync), per message", times)

        # The daemon's journal as it runs: how long until a caption edge is on disk.
        j = Journal(path)
        j.open([])
        times = []
        for _ in range(40):
            before = j.counters["fsyncs"]
            t = time.perf_counter()
            j.append("audiocap/kitchen/events", PAYLOAD, False)
            j.append("audiocap/kitchen/state/Speech", "OFF", True)
            while j.counters["fsyncs"] == before:
                time.sleep(0.0005)
            times.append(time.perf_counter() - t)
        j.close()
        us = sorted(x * 1e3 for x in times)
        print(f"\ncaption edge written -> fsync'd by the syncer thread (SYNC_DELAY_S = {SYNC_DELAY_S} s): "
              f"median {statistics.median(us):.1f} ms, max {us[-1]:.1f} ms over {len(us)} edges")


if __name__ == "__main__":
    main()
