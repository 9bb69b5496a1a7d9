"""The history service against a real mosquitto: captions in, MQTT 5 answers and retained digests
out, a malformed flood skipped and counted (faults: test_faults.py)."""

from __future__ import annotations

import json
import time

import hhelpers as hh
from hhelpers import event
from history.inputs import KINDS

H = 3600.0


def _caption_pairs(n: int, t0: float, node: str = "kitchen", step: float = 10.0, prefix: str = "c"):
    """n captions (start then end events), one every ``step`` s from t0, alternating classes."""
    out = []
    for i in range(n):
        label = ("Music", "Speech", "Alarm")[i % 3]
        t = t0 + i * step
        eid = f"{prefix}{i:05d}"
        out.append(event("start", eid, label, t, node=node, urgent=label == "Alarm"))
        out.append(event("end", eid, label, t, t + step / 2, node=node, urgent=label == "Alarm"))
    return out


def _send_all(publisher, events):
    for e in events:
        publisher.send(f"audiocap/{e['node']}/events", e)


def test_captions_are_stored_queried_and_digested(broker, history_factory, publisher, requester):
    history = history_factory()
    history.start()
    now = time.time()
    day0 = now - 3 * H  # three hours of captions ending now
    events = _caption_pairs(30, day0, step=H / 10) + _caption_pairs(5, now - 600, node="hall", step=60, prefix="h")
    events.append(event("start", "open1", "Alarm", now - 5, node="hall", urgent=True))  # still on
    _send_all(publisher, events)
    rows = hh.wait_rows(history, lambda r: len(r) == 36 and all(x["end_ms"] for x in r if x["event_id"] != "open1"),
                        20, "36 captions")
    by_id = {r["event_id"]: r for r in rows}
    for e in events:  # every start and end merged into its row, times to the millisecond
        r = by_id[e["event_id"]]
        assert (r["node"], r["label"], hh.iso(r["start_ms"] / 1000), r["urgent"]) == (
            e["node"], e["label"], e["start"], int(e["urgent"]))
        if e["type"] == "end":
            assert hh.iso(r["end_ms"] / 1000) == e["end"]

    # Captions of one node in a window, newest first, paged.
    since, until = hh.iso(day0 + H), hh.iso(day0 + 2 * H)
    want = sorted({e["event_id"] for e in events if e["node"] == "kitchen" and e["type"] == "end"
                   and e["start"] < until and e["end"] >= since}, reverse=True)
    got, before = [], None
    while True:
        a = requester.ask({"q": "captions", "nodes": ["kitchen"], "since": since, "until": until, "limit": 4,
                           **({"before": before} if before else {})})
        assert a["ok"], a
        got += [c["event_id"] for c in a["captions"]]
        if not a["truncated"]:
            break
        before = a["next"]
    assert got == want
    # Urgent ones since a time, across nodes; the open alarm included.
    a = requester.ask({"q": "urgent", "since": hh.iso(now - 1200)})
    want = {e["event_id"] for e in events if e["urgent"] and e["start"] >= hh.iso(now - 1200 - H / 20)}
    assert {c["event_id"] for c in a["captions"]} == want and "open1" in want
    # Counts per class per hour.
    a = requester.ask({"q": "hourly", "from": hh.iso(day0), "hours": 4, "nodes": ["kitchen"]})
    for label, t in a["labels"].items():
        for h in range(4):
            assert t["n"][h] == sum(1 for e in events if e["type"] == "start" and e["node"] == "kitchen"
                                    and e["label"] == label and hh.iso(day0 + h * H) <= e["start"] < hh.iso(day0 + (h + 1) * H))
    # Asking for too much: a bounded answer that says so.
    a = requester.ask({"q": "captions", "since": hh.iso(day0 - H), "limit": 10**6})
    assert a["ok"] and a["limited"] == 500 and len(a["captions"]) == 36 and not a["truncated"]
    # A query it does not understand is answered with the reason; one with a response topic
    # outside the history's response level is not answered at all.
    a = requester.ask({"q": "captions", "since": "yesterday"})
    assert a["ok"] is False and "since" in a["error"]
    assert requester.ask({"q": "hourly", "from": hh.iso(day0)}, timeout=2, response="audiocap/kitchen/events") is None

    # The retained digest of each node: today's counts, last urgent, last, what is on.
    digest = requester.wait_retained("audiocap/_history/digest/hall", lambda d: d["last"]["event_id"] == "open1")
    assert digest["urgent_today"] == sum(1 for e in events if e["node"] == "hall" and e["type"] == "start"
                                         and e["urgent"])
    assert digest["last_urgent"]["event_id"] == "open1" and [o["event_id"] for o in digest["open"]] == ["open1"]
    assert requester.wait_retained("audiocap/_history/status", lambda s: s == "online")
    hist_took = history.stop()
    assert hist_took < 2.0, hist_took
    assert requester.wait_retained("audiocap/_history/status", lambda s: s == "offline")


def test_a_malformed_flood_changes_nothing_in_the_database(broker, history_factory, publisher, requester):
    history = history_factory()
    history.start()
    good = _caption_pairs(3, time.time() - 100)
    _send_all(publisher, good)
    before = hh.wait_rows(history, lambda r: len(r) == 3 and all(x["end_ms"] for x in r), 20, "3 captions")
    base = event("end", "c00000", "Music", time.time() - 50, time.time() - 40)  # would overwrite the first caption
    bad = {
        "oversized": [json.dumps({**base, "caption": "x" * 20000})],
        "malformed": ["not json", "[1, 2]", b"\xff\xfe", "null", '{"schema": 1'],
        "unknown_schema": [json.dumps({**base, "schema": 2}), json.dumps({k: v for k, v in base.items() if k != "schema"})],
        "wrong_type": [json.dumps({**base, "start": 17}), json.dumps({**base, "urgent": "yes"}),
                       json.dumps({**base, "label": ""}), json.dumps({**base, "end": "2026-13-45T00:00:00Z"}),
                       json.dumps({**base, "type": "middle"}), json.dumps({**base, "level_dbfs": "loud"}),
                       json.dumps({**base, "event_id": None}), json.dumps({**base, "end": hh.iso(0)})],
    }
    sent = {k: 0 for k in bad}
    for i in range(150):  # a flood: ~2400 messages
        for kind, payloads in bad.items():
            for p in payloads:
                publisher.send("audiocap/kitchen/events", p, wait=(i % 50 == 0))
                sent[kind] += 1
    publisher.send("audiocap/kitchen/events", event("start", "last", "Speech", time.time()))
    rows = hh.wait_rows(history, lambda r: any(x["event_id"] == "last" for x in r), 60, "the caption after the flood")
    assert [r for r in rows if r["event_id"] != "last"] == before
    history.stop()  # its last metrics (retained) count every skipped message by kind
    metrics = requester.wait_retained("audiocap/_history/metrics", lambda m: not m["connected"])
    assert metrics["skipped"] == sent
    for kind in sent:  # one log line per kind
        assert history.log().count(f"skipped a message on audiocap/kitchen/events: {KINDS[kind]}") == 1, kind


def test_a_flood_of_queries_is_bounded_and_counted(broker, history_factory, requester, tmp_path):
    conf = tmp_path / "history.toml"
    conf.write_text("[history]\nmax_requests_per_s = 5.0\n")
    history = history_factory("--config", str(conf))
    history.start()
    asked = 60
    t0 = time.monotonic()
    for i in range(asked):  # as fast as paho sends them
        requester.ask({"q": "urgent", "since": hh.iso(time.time() - 60)}, timeout=0)
    time.sleep(1.5)
    elapsed = time.monotonic() - t0
    answered = len(requester.answers)
    # A burst of twice the rate, then the rate: far fewer than asked, and each skipped one counted.
    assert 10 <= answered <= 10 + 5 * elapsed + 1, (answered, elapsed)
    history.stop()
    metrics = requester.wait_retained("audiocap/_history/metrics", lambda m: not m["connected"])
    assert metrics["skipped"]["request_flood"] == asked - answered
    assert metrics["answered"] == answered
    assert history.log().count("more queries than [history] max_requests_per_s") == 1
