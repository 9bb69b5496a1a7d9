"""Benchmark of audiocap-history: ingest rate, query latency, database size, memory.

    nice -n 10 python3 bench/history.py                 # 10 nodes x 1 caption / 10 s x 30 days
    python3 bench/history.py --days 3 --out /tmp/h.db   # quicker

Figures are printed, never asserted:

1. Ingest on one core, the service's own path: caption events (start and end)
   parsed and checked (:func:`history.inputs.parse_caption`) and written in
   batches of 100 events, one transaction each (as the service batches what
   arrived), ``synchronous = FULL``.
2. A database of NODES x one caption every 10 s x DAYS (classes, durations and
   1 % urgent drawn from a seeded generator), filled in bulk; its size per node-month.
3. Query latency (p50, p95 over repeated runs at random days): a node's day
   (captions page + totals, counts per hour) and a week of ten nodes.
4. Opening that database as the service does at every start (``quick_check``).
5. The service end to end on that database: ``python -m history`` against a
   real mosquitto; events published at QoS 1 as fast as the broker takes them;
   captions/s until the last is committed; the service's RSS (VmHWM) after.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "daemon"))
sys.path.insert(0, str(REPO / "tests" / "history"))

from history.inputs import parse_caption  # noqa: E402
from history.store import Caption, Store  # noqa: E402

LABELS = ("Speech", "Music", "Animal", "Vehicle", "Alarm", "Doorbell or knock")
DAY_MS = 86_400_000


def _iso(ms: int) -> str:
    from history.store import iso

    return iso(ms)


def _events(n: int, t0_ms: int, node: str = "bench") -> list[bytes]:
    rng = random.Random(1)
    out = []
    for i in range(n):
        label = rng.choice(LABELS)
        s = t0_ms + i * 10_000
        e = s + rng.randint(1000, 9000)
        base = {"schema": 1, "event_id": f"{node}-{i:08d}", "label": label, "caption": f"[{label}]", "score": 0.8,
                "start": _iso(s), "node": node, "source": "mic:default", "model": "audiocap-home@0.1",
                "urgent": label == "Alarm", "level_dbfs": -21.5}
        out.append(json.dumps({**base, "type": "start", "end": None}).encode())
        out.append(json.dumps({**base, "type": "end", "end": _iso(e)}).encode())
    return out


def ingest_rate(tmp: Path, n: int) -> float:
    """Caption events per second through parse + batched upsert, on this core."""
    store = Store(tmp / "ingest.db")
    payloads = _events(n, int(time.time() * 1000) - n * 10_000)
    t = time.process_time()
    w = time.perf_counter()
    for i in range(0, len(payloads), 100):
        store.add(parse_caption("bench", p) for p in payloads[i:i + 100])
    cpu, wall = time.process_time() - t, time.perf_counter() - w
    store.close()
    print(f"ingest, one core: {len(payloads)} events ({n} captions) in {wall:.2f} s wall, {cpu:.2f} s CPU: "
          f"{len(payloads) / cpu:,.0f} events/s = {n / cpu:,.0f} captions/s per CPU-second "
          f"({n / wall:,.0f} captions/s wall, fsync included)")
    return n / cpu


def fill(path: Path, nodes: int, days: int, now_ms: int) -> Store:
    rng = random.Random(7)
    store = Store(path, max_bytes=1 << 40, retention_ms=10_000 * DAY_MS)
    t0 = now_ms - days * DAY_MS
    per_node = days * DAY_MS // 10_000
    w = time.perf_counter()
    for node in range(nodes):
        batch = []
        for i in range(per_node):
            label = rng.choice(LABELS)
            s = t0 + i * 10_000 + rng.randint(0, 2000)
            batch.append(Caption(f"room{node}", f"r{node}-{i:08d}", label, s, s + rng.randint(1000, 60_000),
                                 rng.random() < 0.01, -20.0, "audiocap-home@0.1", f"[{label}]"))
            if len(batch) == 20_000:
                store.add(batch)
                batch = []
        store.add(batch)
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = path.stat().st_size
    print(f"database: {nodes} nodes x {per_node:,} captions ({days} days, one per 10 s) = {store.count():,} rows, "
          f"filled in {time.perf_counter() - w:.0f} s; {size / 1e6:.1f} MB = "
          f"{size / nodes / days * 30 / 1e6:.1f} MB per node-month")
    return store


def _pct(xs: list[float]) -> str:
    xs = sorted(xs)
    p95 = xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))]
    return f"p50 {statistics.median(xs) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms (n={len(xs)})"


def query_latency(store: Store, nodes: int, days: int, now_ms: int, reps: int) -> None:
    rng = random.Random(3)
    cases = {
        "a node's day, captions (page of 200 + totals)":
            lambda d: store.captions(d, d + DAY_MS, [f"room{rng.randrange(nodes)}"], limit=200),
        "a node's day, counts per hour": lambda d: store.hourly(d, 24, [f"room{rng.randrange(nodes)}"]),
        "a week of ten nodes, captions (page of 500 + totals)":
            lambda d: store.captions(d, d + 7 * DAY_MS, None, limit=500),
        "a week of ten nodes, urgent only": lambda d: store.captions(d, d + 7 * DAY_MS, None, urgent_only=True,
                                                                     limit=500),
        "a node's digest": lambda d: store.digest(f"room{rng.randrange(nodes)}", d, d + DAY_MS - 1),
    }
    for name, fn in cases.items():
        times = []
        span = 7 if "week" in name else 1
        for _ in range(reps):
            d = now_ms - rng.randint(span, max(span, days)) * DAY_MS
            t = time.perf_counter()
            fn(d)
            times.append(time.perf_counter() - t)
        print(f"query, {name}: {_pct(times)}")


def service_end_to_end(db: Path, n: int, tmp: Path) -> None:
    import dhelpers
    import hhelpers

    broker = dhelpers.Mosquitto(tmp)
    broker.start()
    hist = hhelpers.History(tmp, broker.port, db)
    try:
        hist.start()
        pub = hhelpers.Publisher(broker.port)
        payloads = _events(n, int(time.time() * 1000) - n * 10_000, node="e2e")
        t = time.perf_counter()
        for i, p in enumerate(payloads):
            pub.send("audiocap/e2e/events", p, wait=(i % 200 == 199))
        pub.send("audiocap/e2e/events", payloads[-1])
        import sqlite3

        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        last = json.loads(payloads[-1])["event_id"]
        while not con.execute("SELECT 1 FROM captions WHERE node = 'e2e' AND event_id = ? AND end_ms IS NOT NULL",
                              (last,)).fetchone():
            time.sleep(0.02)
        wall = time.perf_counter() - t
        con.close()
        pub.close()
        status = Path(f"/proc/{hist.proc.pid}/status").read_text()
        hwm = next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmHWM"))
        took = hist.stop()
        print(f"service end to end (mosquitto, QoS 1, the big database): {n} captions ({2 * n} events) stored in "
              f"{wall:.2f} s = {n / wall:,.0f} captions/s; service peak RSS {int(hwm) / 1024:.0f} MiB; "
              f"SIGTERM to exit {took:.2f} s")
    finally:
        hhelpers.kill_all([hist.proc] if hist.proc else [])
        broker.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=10)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--ingest", type=int, default=20_000, help="captions for the one-core ingest figure")
    p.add_argument("--e2e", type=int, default=5_000, help="captions for the end-to-end figure")
    p.add_argument("--reps", type=int, default=40)
    p.add_argument("--out", help="keep the database here (default: a temporary folder)")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="audiocap-history-bench-"))
    try:
        ingest_rate(tmp, args.ingest)
        db = Path(args.out) if args.out else tmp / "history.sqlite3"
        if db.exists():
            db.unlink()
        now_ms = int(time.time() * 1000)
        store = fill(db, args.nodes, args.days, now_ms)
        query_latency(store, args.nodes, args.days, now_ms, args.reps)
        store.close()
        t = time.perf_counter()
        Store(db, max_bytes=1 << 40, retention_ms=10_000 * DAY_MS).close()  # what every start does
        print(f"opening the database (header, PRAGMA quick_check, schema): {time.perf_counter() - t:.2f} s")
        print(f"bench process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
        if shutil.which("mosquitto"):
            (tmp / "broker").mkdir()
            service_end_to_end(db, args.e2e, tmp / "broker")
        else:
            print("service end to end: skipped (no mosquitto)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
