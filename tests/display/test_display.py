"""The caption display in a real headless Chromium, against a real mosquitto
serving display/ and the real daemon replaying AudioSet bal_train.

Every expectation is derived from what the broker delivered to an independent
paho observer in the same run. Figures (seconds from delivery to display, axe
counts) and screenshots go to runs/display/.
"""

from __future__ import annotations

import json
import signal
import statistics
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import display_helpers as dh


def _local_clock(iso: str) -> str:
    """What the page must show for ``iso`` in the browser's zone (en-GB: 24 h)."""
    t = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return t.astimezone(ZoneInfo(dh.BROWSER_TZ)).strftime("%H:%M:%S")


def _event(observer, type_: str, event_id: str) -> dict:
    """The event the observer got (waiting a moment: the page may have been faster)."""
    def find():
        return next((e for _, e in dh.delivered(observer) if (e["type"], e["event_id"]) == (type_, event_id)), None)

    observer.wait_for(lambda _messages: find() is not None, 2)
    e = find()
    assert e is not None, f"the page shows a {type_} event {event_id} the broker never delivered"
    return e


def _check_history(driver, observer) -> list[dict]:
    """Every history entry is an end event the broker delivered, with the payload's
    label, node, start and end, and its local start and end times."""
    entries = dh.dom(driver, "[data-history-entry]")
    for entry in entries:
        e = _event(observer, "end", entry["event-id"])
        assert (entry["label"], entry["node"], entry["start"], entry["end"]) == (e["label"], e["node"], e["start"],
                                                                                  e["end"])
        assert _local_clock(e["start"]) in entry["text"] and _local_clock(e["end"]) in entry["text"], entry
    return entries


def _latencies(driver, observer) -> dict[str, list[float]]:
    """Seconds from the broker's delivery to the observer to the element appearing in the page."""
    appeared = driver.execute_script("return window.__appeared")
    out: dict[str, list[float]] = {"start": [], "end": []}
    for t, e in dh.delivered(observer):
        key = f"{e['type']}:{e['event_id']}"
        if key in appeared:
            out[e["type"]].append(appeared[key] / 1000.0 - t)
    return out


def _record(name: str, figures: dict) -> None:
    dh.SHOTS.mkdir(parents=True, exist_ok=True)
    (dh.SHOTS / f"{name}.json").write_text(json.dumps(figures, indent=1))
    print(f"\n{name}: {json.dumps(figures)}")


def test_live_captions_per_room_then_sigkill_shows_the_room_offline(
    broker, browser, daemons, observer, bal_train_dir, replay_subset
):
    kitchen = daemons("kitchen", bal_train_dir)  # paced: one embedding every 0.96 s
    daemons("hall", replay_subset("hall", 2000, 200))
    browser.get(broker.page_url())

    # Both rooms report in, each in its own group.
    dh.wait_until(lambda: len(dh.dom(browser, "[data-node-status][data-state=online]")) == 2, 30,
                  what="both nodes online")
    # A caption on now, in very large type, for a start the broker delivered and no end yet.
    active = dh.wait_until(lambda: dh.dom(browser, "[data-active-caption]"), 30, what="an active caption")
    for a in active:
        e = _event(observer, "start", a["event-id"])
        assert (a["label"], a["node"]) == (e["label"], e["node"]), a
    sizes = browser.execute_script(
        "return Array.from(document.querySelectorAll('[data-active-caption] .words'))"
        ".map(function (e) { return parseFloat(getComputedStyle(e).fontSize); })")
    assert min(sizes) >= 48, sizes

    # Ended captions go to the history with their payload times.
    dh.wait_until(lambda: dh.dom(browser, "[data-history-entry]"), 40, what="a history entry")
    dh.wait_until(lambda: dh.dom(browser, "[data-active-caption][data-node=kitchen]"), 40,
                  what="a kitchen caption on now")
    entries = _check_history(browser, observer)
    assert {e["node"] for e in entries} <= {"kitchen", "hall"}
    dh.screenshot(browser, "tv-1080p")
    dh.set_viewport(browser, 412, 915, mobile=True)
    time.sleep(0.5)
    sizes = browser.execute_script(
        "return Array.from(document.querySelectorAll('[data-active-caption] .words'))"
        ".map(function (e) { return parseFloat(getComputedStyle(e).fontSize); })")
    assert sizes and min(sizes) >= 48, sizes
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 412
    dh.screenshot(browser, "phone-portrait")
    dh.set_viewport(browser, 1920, 1080)

    # SIGKILL: no clean "offline" from the daemon; the broker's last will says it.
    dh.wait_until(lambda: dh.dom(browser, "[data-active-caption][data-node=kitchen]"), 40,
                  what="a kitchen caption on now")
    killed_at = time.monotonic()
    kitchen.send_signal(signal.SIGKILL)
    dh.wait_until(lambda: dh.dom(browser, "[data-node-status][data-node=kitchen][data-state=offline]"), 10,
                  what="kitchen shown offline")
    offline_after = time.monotonic() - killed_at
    assert not dh.dom(browser, "[data-active-caption][data-node=kitchen]")
    status = dh.dom(browser, "[data-node-status][data-node=kitchen]")[0]
    assert "Offline since" in status["text"]
    assert dh.dom(browser, "[data-node-status][data-node=hall]")[0]["state"] == "online"
    dh.screenshot(browser, "tv-1080p-node-offline")

    lat = _latencies(browser, observer)
    assert lat["start"] and lat["end"]
    _record("latency", {
        "shown_offline_after_sigkill_s": round(offline_after, 3),
        "delivery_to_display_s": {k: {"n": len(v), "median": round(statistics.median(v), 4), "max": round(max(v), 4)}
                                  for k, v in lat.items()},
    })
    # The page is told about as soon as the observer (same broker, same machine).
    assert max(lat["start"] + lat["end"]) < 2.0, lat
