"""Faults on a real mosquitto: the history SIGKILLed mid-stream, the broker restarted, SIGTERM,
a full disk (a small tmpfs), a damaged database at start. Nothing the broker took is lost."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

import hhelpers as hh
from hhelpers import event


def _pairs(n, t0, prefix):
    out = []
    for i in range(n):
        eid, t = f"{prefix}{i:04d}", t0 + i
        label = ("Music", "Speech", "Alarm")[i % 3]
        out += [event("start", eid, label, t, urgent=label == "Alarm"),
                event("end", eid, label, t, t + 0.5, urgent=label == "Alarm")]
    return out


def _complete(rows, ids):
    got = {r["event_id"] for r in rows if r["end_ms"] is not None}
    return ids <= got


def test_sigkill_mid_stream_a_broker_restart_and_sigterm_lose_nothing(broker, history_factory):
    history = history_factory()
    history.start()
    first = _pairs(300, time.time() - 4000, "k")
    sent = []
    pub = hh.Publisher(broker.port)

    def stream():
        for e in first:
            pub.send("audiocap/kitchen/events", e)
            sent.append(e)
            time.sleep(0.002)

    t = threading.Thread(target=stream)
    t.start()
    while len(sent) < 150:
        time.sleep(0.01)
    history.stop(signal.SIGKILL)  # mid-stream: the rest waits in the broker for its session
    killed_at = len(sent)
    time.sleep(0.3)
    history.start()
    t.join()
    pub.close()
    assert killed_at < len(first), "the stream ended before the kill"
    ids = {e["event_id"] for e in first}
    hh.wait_rows(history, lambda r: _complete(r, ids), 30, "every caption after the SIGKILL")

    # The broker restarts under the running service (its persistence keeps the session).
    broker.stop()
    time.sleep(0.5)
    broker.start()
    second = _pairs(100, time.time() - 900, "r")
    pub = hh.Publisher(broker.port)
    for e in second:
        pub.send("audiocap/kitchen/events", e)
    ids |= {e["event_id"] for e in second}
    rows = hh.wait_rows(history, lambda r: _complete(r, ids), 30, "every caption after the broker restart")
    assert len(rows) == len(ids) == 400
    assert "connected to MQTT broker" in history.logs[-1].read_text().split("lost the MQTT broker")[-1]

    # SIGTERM in a stream: gone within 2 s, and what the broker took is stored (now or at the next start).
    third = _pairs(200, time.time() - 300, "t")
    for e in third[:200]:
        pub.send("audiocap/kitchen/events", e, wait=False)
    took = history.stop()
    for e in third[200:]:
        pub.send("audiocap/kitchen/events", e)
    pub.close()
    assert took < 2.0, took
    assert history.proc.returncode == 0, history.log()[-1000:]
    history.start()
    ids |= {e["event_id"] for e in third}
    hh.wait_rows(history, lambda r: _complete(r, ids), 30, "every caption after SIGTERM")
    assert history.log().count("\nTraceback") == 0


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs of our own: a real full disk (needs root, as in CI)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_keeps_the_service_running_saying_so_and_loses_nothing(broker, history_factory, small_disk):
    history = history_factory(db=small_disk / "history.sqlite3")
    history.start()
    req = hh.Requester(broker.port)
    pub = hh.Publisher(broker.port)
    pub.send("audiocap/kitchen/events", event("start", "first", "Speech", time.time() - 100))
    hh.wait_rows(history, lambda r: len(r) == 1, 10, "the first caption")
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * max(0, free - 48 * 1024))  # leave 48 kB
    events = _pairs(400, time.time() - 3000, "f")
    for e in events:
        pub.send("audiocap/kitchen/events", e, wait=False)
        if "database full" in history.log() or "database failing" in history.log():
            break
    history.wait_log("retrying every", 30)
    assert history.proc.poll() is None
    # It says so: in its metrics and in its answers, which it still gives.
    metrics = req.wait_retained("audiocap/_history/metrics", lambda m: m["disk_full"])
    assert metrics["pending"] > 0 and metrics["error"]
    answer = req.ask({"q": "captions", "since": hh.iso(time.time() - 3600)})
    assert answer["ok"] and answer["disk_full"] is True
    for e in events:  # the rest of the stream waits in the broker meanwhile
        pub.send("audiocap/kitchen/events", e, wait=False)
    filler.unlink()  # space again: everything arrives
    ids = {e["event_id"] for e in events} | {"first"}
    rows = hh.wait_rows(history, lambda r: _complete(r, ids - {"first"}) and len(r) == len(ids), 60,
                        "every caption once space is back")
    assert len(rows) == len(ids)
    history.wait_log("database writable again", 5)
    req.wait_retained("audiocap/_history/metrics", lambda m: not m["disk_full"])
    pub.close()
    req.close()
    assert history.stop() < 2.0


def test_a_damaged_database_at_start_is_refused_in_one_line_and_left_as_it_is(tmp_path):
    db = tmp_path / "history.sqlite3"
    db.write_bytes(b"SQLite format 3\x00" + os.urandom(8192))  # a right header, garbage after it
    before = db.read_bytes()
    r = subprocess.run([sys.executable, "-m", "history", "--db", str(db), "--mqtt-port", "1"], cwd=hh.REPO,
                       env=hh.dhelpers.daemon_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 65, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("audiocap-history: error: ") and str(db) in lines[0], lines
    assert db.read_bytes() == before
