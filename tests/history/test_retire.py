"""A node retired with ``audiocapd --retire-node`` stays retired in the history: its digest and
Home Assistant sensors are not said again when the history restarts (it was down while the node
was retired), its captions stay queryable, and it comes back when it speaks again."""

from __future__ import annotations

import json
import time

import hhelpers as hh
from hhelpers import dhelpers, event

DIGEST = "audiocap/_history/digest/attic"
SENSOR = "homeassistant/sensor/attic_history_sounds_today/config"


def _retained_now(port: int, topics: list[str], settle: float = 1.5) -> dict:
    """What a client that subscribes now is given as retained for ``topics`` (decoded JSON)."""
    sub = dhelpers.Subscriber(port, topics)
    try:
        time.sleep(settle)
        with sub.cond:
            return {t: json.loads(p) for t, p, retained in sub.messages if retained and p}
    finally:
        sub.close()


def test_a_retired_node_is_not_brought_back_by_a_restart_and_returns_when_it_speaks(
        broker, history_factory, publisher, requester):
    history = history_factory()
    history.start()
    now = time.time()
    publisher.client.publish("audiocap/attic/status", "offline", qos=1, retain=True).wait_for_publish(10)
    publisher.send("audiocap/attic/events", event("start", "a1", "Music", now - 60, node="attic"))
    publisher.send("audiocap/attic/events", event("end", "a1", "Music", now - 60, now - 30, node="attic"))
    requester.wait_retained(DIGEST, lambda d: d["total_today"] == 1)
    assert _retained_now(broker.port, [SENSOR])[SENSOR]["state_topic"] == DIGEST
    history.stop()

    # Retired while the history is away: the broker keeps the empty status for its session.
    r = dhelpers.run_daemon("--retire-node", "attic", "--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker.port),
                            timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _retained_now(broker.port, [DIGEST, SENSOR], settle=0.5) == {}

    for _ in range(2):  # the start that learns of it, then one that must remember it
        history.start()
        history.wait_log("node 'attic' was retired", 10)
        assert _retained_now(broker.port, [DIGEST, SENSOR]) == {}, history.log()[-1500:]
        history.stop()
    assert history.log().count("node 'attic' was retired") == 1

    history.start()
    a = None
    for _ in range(5):  # the query session connects beside the captions' one
        a = requester.ask({"q": "captions", "nodes": ["attic"], "since": hh.iso(now - 3600)}, timeout=2)
        if a:
            break
    assert [c["event_id"] for c in a["captions"]] == ["a1"]  # its past stays
    publisher.send("audiocap/attic/events", event("start", "a2", "Speech", time.time(), node="attic"))
    history.wait_log("node 'attic' is back in service", 10)
    got = _retained_now(broker.port, [DIGEST, SENSOR], settle=2.0)
    assert got.get(DIGEST, {}).get("total_today") == 2 and SENSOR in got, got
