"""The caption store on real SQLite: merging, migrations, refusals, retention, the size bound,
and every query checked against a brute-force answer over the same captions."""

from __future__ import annotations

import random
import sqlite3
from datetime import datetime, timezone

import pytest

from history.store import SCHEMA_VERSION, Caption, Store, StoreError, iso

H = 3_600_000
T0 = 1_796_000_000_000  # 2026-11-30T00:53:20Z


def cap(eid, label, start, end, node="kitchen", urgent=False, level=-20.0):
    return Caption(node, eid, label, start, end, urgent, level, "audiocap-home@0.1", f"[{label}]")


def test_start_and_end_merge_into_one_row_in_any_order_and_repeats_change_nothing(tmp_path):
    s = Store(tmp_path / "h.db")
    s.add([cap("a", "Music", T0 + 1234, None, level=-30.0)])
    s.add([cap("b", "Alarm", T0 + 5000, T0 + 9001, urgent=True)])  # the end first (a start lost in a journal)
    s.add([cap("b", "Alarm", T0 + 5000, None, urgent=False, level=-10.0)])
    s.add([cap("a", "Music", T0 + 1234, T0 + 60_000, level=-25.0)] * 2)
    rows = s.captions(T0, T0 + H)["captions"]
    assert [(r["event_id"], r["start"], r["end"], r["urgent"], r["level_dbfs"]) for r in rows] == [
        ("b", iso(T0 + 5000), iso(T0 + 9001), True, -10.0),
        ("a", iso(T0 + 1234), iso(T0 + 60_000), False, -25.0),
    ]
    want = datetime.fromtimestamp((T0 + 1234) / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    assert rows[1]["start"] == want  # the payload's form, to the millisecond
    assert s.count() == 2


def test_a_version_1_database_is_migrated_and_keeps_its_captions(tmp_path):
    path = tmp_path / "old.db"
    con = sqlite3.connect(path)  # version 1, as it was shipped: no caption column
    con.executescript(
        "CREATE TABLE captions (node TEXT NOT NULL, event_id TEXT NOT NULL, label TEXT NOT NULL, "
        "start_ms INTEGER NOT NULL, end_ms INTEGER, urgent INTEGER NOT NULL DEFAULT 0, level REAL, model TEXT, "
        "UNIQUE (node, event_id));"
        f"INSERT INTO captions VALUES ('hall', 'x', 'Speech', {T0}, {T0 + 4000}, 0, NULL, 'm@1');"
        "PRAGMA user_version = 1;")
    con.close()
    s = Store(path)
    assert s.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    assert s.retired() == {}  # version 3's table is there, and empty
    assert [r["event_id"] for r in s.captions(T0, T0 + H)["captions"]] == ["x"]
    s.add([cap("x", "Speech", T0, T0 + 4000, node="hall")])
    assert s.captions(T0, T0 + H)["captions"][0]["caption"] == "[Speech]"


@pytest.mark.parametrize("kind", ["garbage", "truncated", "newer", "foreign"])
def test_a_bad_database_file_is_refused_in_one_line_and_left_untouched(tmp_path, kind):
    path = tmp_path / "h.db"
    if kind == "garbage":
        path.write_bytes(b"not a database at all\n" * 100)
    else:
        s = Store(path)
        s.add([cap(f"e{i}", "Music", T0 + i * 1000, T0 + i * 1000 + 500) for i in range(3000)])
        s.close()
        if kind == "truncated":  # the header survives, the pages do not
            data = path.read_bytes()
            path.write_bytes(data[:4096] + b"\xff" * (len(data) - 4096))
        else:
            con = sqlite3.connect(path)
            con.execute("PRAGMA user_version = 99" if kind == "newer" else "ALTER TABLE captions RENAME TO other")
            if kind == "foreign":
                con.execute("PRAGMA user_version = 0")
            con.commit()
            con.close()
    before = path.read_bytes()
    with pytest.raises(StoreError) as err:
        Store(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg, msg
    assert {"garbage": "not an SQLite database", "truncated": "damaged", "newer": "newer",
            "foreign": "something else"}[kind] in msg
    assert path.read_bytes() == before  # never silently emptied


def test_retention_and_the_size_bound_delete_the_oldest_first(tmp_path):
    now = T0 + 40 * 86_400_000
    s = Store(tmp_path / "h.db", max_bytes=400_000, retention_ms=30 * 86_400_000)
    old = [cap(f"old{i}", "Speech", now - 31 * 86_400_000 + i, now - 31 * 86_400_000 + i + 1) for i in range(50)]
    s.add(old + [cap("kept", "Speech", now - 29 * 86_400_000, now - 29 * 86_400_000 + 1)])
    assert s.prune(now) == 50 and s.count() == 1
    # Far more than fits in 400 kB: the newest stay.
    s.add([cap(f"n{i:05d}", "Music", now - 10 * H + i * 1000, now - 10 * H + i * 1000 + 900) for i in range(20000)])
    assert s.used_bytes() > 400_000
    gone = s.prune(now)
    assert s.used_bytes() <= 400_000 and gone > 0
    newest = s.captions(now - 11 * H, now, limit=1)["captions"][0]
    assert newest["event_id"] == "n19999"
    left = s.db.execute("SELECT MIN(start_ms) FROM captions").fetchone()[0]
    assert s.db.execute("SELECT COUNT(*) FROM captions WHERE start_ms < ?", (left,)).fetchone()[0] == 0


def _random_captions(rng, n):
    out = []
    for i in range(n):
        start = T0 + rng.randrange(0, 30 * H)
        end = None if rng.random() < 0.03 else start + rng.choice([500, 5000, 60_000, 2 * H])
        out.append(cap(f"e{i:04d}", rng.choice(["Music", "Speech", "Alarm"]), start, end,
                       node=rng.choice(["kitchen", "hall", "bed"]), urgent=rng.random() < 0.1))
    return out


def test_queries_match_a_brute_force_answer(tmp_path):
    rng = random.Random(7)
    caps = _random_captions(rng, 1500)
    s = Store(tmp_path / "h.db")
    s.add(caps)
    since, until = T0 + 5 * H + 123, T0 + 17 * H

    def on_in(c, a, b):  # on at some moment of [a, b); an open caption counts for a day
        end = c.end_ms if c.end_ms is not None else c.start_ms + 86_400_000
        return c.start_ms < b and end >= a

    for nodes, urgent in ((None, False), (["hall", "bed"], False), (None, True)):
        want = sorted((c for c in caps if on_in(c, since, until) and (nodes is None or c.node in nodes)
                       and (c.urgent or not urgent)), key=lambda c: (c.start_ms, c.event_id), reverse=True)
        got, before = [], None
        while True:  # page through it
            page = s.captions(since, until, nodes, urgent_only=urgent, limit=97, before=before)
            got += [r["event_id"] for r in page["captions"]]
            if before is None:
                totals = page["totals"]
            if not page["truncated"]:
                break
            before = tuple(page["next"])
        assert got == [c.event_id for c in want]
        for label in {c.label for c in want}:
            mine = [c for c in want if c.label == label]
            secs = sum(max(0, min(until, c.end_ms if c.end_ms is not None else until) - max(since, c.start_ms))
                       for c in mine) / 1000
            assert totals[label]["n"] == len(mine) and abs(totals[label]["s"] - secs) < 0.2
            assert totals[label]["urgent"] == sum(c.urgent for c in mine)

    hourly = s.hourly(T0 + 2 * H, 24, ["kitchen"])
    for label, t in hourly["labels"].items():
        for h in range(24):
            a, b = T0 + (2 + h) * H, T0 + (3 + h) * H
            mine = [c for c in caps if c.node == "kitchen" and c.label == label]
            assert t["n"][h] == sum(a <= c.start_ms < b for c in mine)
            assert t["urgent"][h] == sum(a <= c.start_ms < b and c.urgent for c in mine)
            secs = sum(max(0, min(b, c.end_ms if c.end_ms is not None else T0 + 26 * H) - max(a, c.start_ms))
                       for c in mine if on_in(c, T0 + 2 * H, T0 + 26 * H)) / 1000
            assert abs(t["s"][h] - secs) < 0.2, (label, h)
