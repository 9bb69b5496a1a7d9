"""Memory bounded by disk: past ``memory_bound`` pending messages wait in the journal only,
and are read back from it, in order, when they can be sent (a real mosquitto)."""

from __future__ import annotations

import time

from daemon.sinks.journal import Journal
from daemon.sinks.mqtt import MqttSink

import dhelpers
from test_mqtt import _cfg, _ctx, _events

BOUND = 20


def _outage_sink(port: int, spool, queue_size: int = 100_000) -> MqttSink:
    sink = MqttSink(_cfg(port, spool_file=str(spool), queue_size=queue_size), _ctx("far"))
    sink.memory_bound = BOUND
    return sink


def test_an_outage_waits_on_disk_and_everything_arrives_in_order(tmp_path, subscriber_factory):
    broker = dhelpers.Mosquitto(tmp_path)
    broker.start()
    # A display that was watching before the outage: its session keeps what the broker gets.
    sub = subscriber_factory(broker.port, ["audiocap/far/events", "audiocap/far/state/+"], client_id="far-watch",
                             persistent=True)
    sub.close()
    broker.stop()
    spool = tmp_path / "spool.jsonl"
    events = _events(400)  # 400 captions: 2,000 messages (event, state, onset / event, state)
    first = _outage_sink(broker.port, spool)
    first.start()
    for ev in events[:400]:
        first.on_event(ev)
    held = len(first._held)
    on_disk = first.journal.on_disk
    assert held <= BOUND and on_disk == 1000 - held, (held, on_disk)
    assert first.queue_depth() == 1000 and first.stats().dropped == 0
    first.close()  # a restart in the middle of the outage
    second = _outage_sink(broker.port, spool)
    second.start()
    # The journal of the first run is read back with no more than the bound in memory.
    assert len(second._held) <= BOUND and len(second.journal._live) <= BOUND
    assert second.journal.on_disk >= 1000 - BOUND
    for ev in events[400:]:
        second.on_event(ev)
    assert second.queue_depth() == 2000 and len(second._held) <= BOUND
    broker.start()
    try:
        sub = subscriber_factory(broker.port, ["audiocap/far/events", "audiocap/far/state/+"],
                                 client_id="far-watch", persistent=True)
        assert second.drain(60), second.stats()
        assert sub.wait_for(lambda m: len(sub.payloads("/events")) >= len(events), 20)
        got = [(e["event_id"], e["type"]) for e in sub.events()]
        assert got == [(e.event_id, e.type) for e in events]  # all, once, in order
        # The journal was compacted while most messages were still on disk only.
        assert second.journal.counters["compactions"] >= 2, second.journal.counters
        last_state = {t: p for t, p, _ in sub.messages if "/state/" in t}
        assert last_state and set(last_state.values()) == {b"OFF"}, last_state
        second.close()
        assert not spool.exists()
    finally:
        broker.stop()


def test_read_back_survives_compaction_and_skips_acks(tmp_path):
    j = Journal(tmp_path / "j.jsonl", sync_delay_s=0)
    j.open([])
    mem = [j.append("t/events", f"m{i}", False) for i in range(5)]
    disk = [j.append("t/events", f"d{i}", False, on_disk=True) for i in range(50)]
    assert j.on_disk == 50 and j.pending == 55
    for e in mem:
        j.ack(e.seq)
    j.append("t/events", "late", False)  # after the run began: on disk too, in order
    assert j.on_disk == 51
    got = j.read_back(10)
    assert [e.payload for e in got] == [f"d{i}" for i in range(10)]
    with j._lock:
        j._rewrite_locked()  # a compaction: the rest of the run is copied, not read into memory
    got += j.read_back(100)
    assert [e.payload for e in got] == [e.payload for e in disk] + ["late"] and j.on_disk == 0
    assert time.time() - got[-1].t < 60
    j.close()
    loaded = Journal(tmp_path / "j.jsonl").load()
    assert [e.payload for e in loaded.entries if not e.acked] == [e.payload for e in got]


def test_outage_bench_memory_stays_flat():
    """bench/outage.py for an hour at ten times the normal rate (the day is the bench's
    default): its loose bounds (every edge in order; the disk-bound sink grows under
    16 MiB and under a quarter of what holding everything in memory grows) must hold."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, str(dhelpers.REPO / "bench" / "outage.py"), "--hours", "1", "--check"],
                       cwd=dhelpers.REPO, env=dhelpers.daemon_env(), capture_output=True, text=True, timeout=300)
    print(r.stdout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "every caption edge delivered once and in order: True" in r.stdout


def test_recover_reads_a_crashed_journal_within_the_bound(tmp_path):
    """A journal left by a crash: recover() keeps the bound in memory, the rest on disk, in
    order, and finds the open caption starts (delivered or not) and the torn line."""
    import json as _json

    path = tmp_path / "j.jsonl"
    j = Journal(path, sync_delay_s=0)
    j.open([])

    def start(eid: str):
        return j.append("a/n/events", _json.dumps({"event_id": eid, "type": "start", "label": "Music"}), False)

    s0 = start("e0")
    j.ack(s0.seq)  # delivered, still open: kept
    j.keep(s0)
    states = [j.append("a/n/state/Music", "ON" if i % 2 else "OFF", True) for i in range(30)]
    s2 = start("e2")  # delivered out of order, still open: among those left on disk, but not pending
    j.ack(s2.seq)
    s1 = start("e1")  # not delivered, open, among those left on disk
    j.append("a/n/events", _json.dumps({"event_id": "e0", "type": "end", "label": "Music"}), False)
    with open(path, "ab") as fh:
        fh.write(b'{"seq": 99, "topic": "torn')  # the crash
    pending_want = [e.seq for e in states] + [s1.seq, s1.seq + 1]

    again = Journal(path, sync_delay_s=0)
    got = again.recover(10)
    assert [e.seq for e in got.pending] == pending_want[:10]
    assert got.on_disk == len(pending_want) - 10 and got.torn == 1
    assert [e.seq for e in got.open_starts] == [s2.seq, s1.seq]  # e0 ended in the file
    assert got.spilled_states == frozenset({"a/n/state/Music"})
    assert len(again._live) == 10
    back = again.read_back(100)
    assert [e.seq for e in got.pending] + [e.seq for e in back] == pending_want
    again.close()
    # Nothing delivered since: the file still holds every pending message, once.
    entries = Journal(path).load().entries
    assert [e.seq for e in entries if not e.acked] == pending_want
    assert [e.seq for e in entries if e.acked] == [s2.seq]  # kept, as delivered
