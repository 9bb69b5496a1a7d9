"""The display with the history service: an urgent sound already on raises the alert on
opening, "While you were away" after a reload lists what the real daemon published meanwhile,
the day strip marks the right hours, and the rooms/title/duration details of issue 22."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import display_helpers as dh
from display_helpers import dhelpers

sys.path.insert(0, str(dhelpers.REPO / "tests" / "history"))
import hhelpers as hh  # noqa: E402

TZ = ZoneInfo(dh.BROWSER_TZ)


def _pub(broker, topic: str, payload, retain: bool = False) -> None:
    """Publishes on the test's own anonymous listener, as the daemon would."""
    args = ["-q", "1", "-t", topic, "-m", payload if isinstance(payload, str) else json.dumps(payload)]
    dh.mqtt_tool("mosquitto_pub", broker.port, None, *(["-r"] if retain else []), *args, check=True)


def test_an_urgent_sound_already_on_alerts_on_opening_and_rooms_can_be_hidden(broker, browser, history_service):
    history_service()
    t0 = time.time() - 20
    _pub(broker, "audiocap/hall/status", "online", retain=True)
    _pub(broker, "audiocap/hall/events", hh.event("start", "al1", "Alarm", t0, node="hall", urgent=True))
    _pub(broker, "audiocap/hall/state/Alarm", "ON", retain=True)
    _pub(broker, "audiocap/hall/events", hh.event("start", "sp1", "Speech", t0 - 100, node="hall"))
    _pub(broker, "audiocap/hall/events", hh.event("end", "sp1", "Speech", t0 - 100, t0 - 75, node="hall"))
    _pub(broker, "audiocap/attic/status", "offline", retain=True)  # offline before the page opened
    req = hh.Requester(broker.port)
    req.wait_retained("audiocap/_history/digest/hall", lambda d: [o["event_id"] for o in d["open"]] == ["al1"])
    req.close()

    browser.get(broker.page_url())
    alert = dh.wait_until(lambda: dh.dom(browser, "[data-alert]"), 15, what="the alert of the sound already on")
    assert [(a["label"], a["node"], a["event-id"]) for a in alert] == [("Alarm", "hall", "al1")]
    card = dh.dom(browser, "[data-active-caption][data-node=hall]")
    assert [(c["label"], c.get("event-id")) for c in card] == [("Alarm", "al1")]
    # Its words once in the title, not "Alarm — Alarm".
    dh.wait_until(lambda: browser.title == "ALERT: Alarm — audiocap", 5, what=f"the title (got {browser.title!r})")
    # The ended caption is listed once, its duration in one piece.
    entry = dh.wait_until(lambda: dh.dom(browser, "[data-history-entry][data-event-id=sp1]"), 10, what="sp1 listed")
    assert len(entry) == 1 and "(25\u00a0s)" in browser.execute_script(
        "return document.querySelector('[data-event-id=sp1] .entry-dur').textContent")
    assert browser.execute_script(
        "return getComputedStyle(document.querySelector('[data-event-id=sp1] .entry-dur')).whiteSpace") == "nowrap"

    # A room offline since before the page opened can be hidden; the choice stays after a reload.
    hide = browser.find_element("css selector", "[data-node-group=attic] .hide-room")
    assert hide.is_displayed()
    hide.click()
    assert not browser.find_element("css selector", "[data-node-group=attic]").is_displayed()
    browser.refresh()
    dh.wait_until(lambda: dh.dom(browser, "[data-alert]"), 15, what="the alert after a reload")
    dh.wait_until(lambda: dh.dom(browser, "[data-node-group=attic]"), 10, what="the attic's group")
    assert not browser.find_element("css selector", "[data-node-group=attic]").is_displayed()
    assert "Show attic" in browser.find_element("id", "hidden-rooms").get_attribute("textContent")
    # It comes back by itself when its device is online again.
    _pub(broker, "audiocap/attic/status", "online", retain=True)
    dh.wait_until(lambda: browser.find_element("css selector", "[data-node-group=attic]").is_displayed(), 10,
                  what="the attic shown again")
    # Retired with `audiocapd --retire-node` while the page is open: the room leaves at once.
    _pub(broker, "audiocap/attic/status", "offline", retain=True)
    r = dhelpers.run_daemon("--retire-node", "attic", "--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker.port),
                            timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    dh.wait_until(lambda: not dh.dom(browser, "[data-node-group=attic]"), 10, what="the retired attic gone")
    assert dh.dom(browser, "[data-node-group=hall]") and dh.dom(browser, "[data-alert]")


def _local_hour(ms: int, day_from: datetime) -> int:
    """Whole hours from the browser's local midnight (as the page counts them)."""
    return int((ms / 1000 - day_from.timestamp()) // 3600)


def _marks_expected(captions, day_from: datetime, hours: int) -> dict[tuple[str, int], int]:
    """(label, hour) -> urgent count, for every hour of today a caption was on in (≥ 1 s) or started in."""
    want: dict[tuple[str, int], int] = {}
    lo, hi = day_from.timestamp() * 1000, day_from.timestamp() * 1000 + hours * 3_600_000
    for c in captions:
        s, e = c["start_ms"], c["end_ms"]
        if e < lo or s >= hi:
            continue
        if s >= lo:
            h = _local_hour(s, day_from)
            want[(c["label"], h)] = want.get((c["label"], h), 0) + int(c["urgent"])
        for h in range(hours):
            a, b = max(s, lo + h * 3_600_000), min(e, lo + (h + 1) * 3_600_000)
            if b - a >= 1000:
                want.setdefault((c["label"], h), 0)
    return want


def _short_replay(bal_train_dir, tmp_path):
    """Three one-clip tfrecords of bal_train (30 s of embeddings, a few captions)."""
    small = [f for f in sorted(bal_train_dir.glob("*.tfrecord")) if f.stat().st_size < 2000][:3]
    d = tmp_path / "replay-short"
    d.mkdir()
    for f in small:
        (d / f.name).symlink_to(f)
    return d


def test_what_you_missed_after_a_reload_and_the_day_at_a_glance(broker, chromium, daemons, observer, bal_train_dir,
                                                                tmp_path, history_service):
    history = history_service()
    now = time.time()
    local_now = datetime.fromtimestamp(now, TZ)
    day_from = local_now.replace(hour=0, minute=0, second=0, microsecond=0)
    # Earlier today, a few hours apart (as many as the day has had), one of them urgent.
    earlier = []
    for k, label in ((3, "Music"), (2, "Alarm"), (1, "Speech")):
        t = now - k * 3600 - 300
        if t > day_from.timestamp() + 60:
            eid = f"early-{label}"
            earlier += [hh.event("start", eid, label, t, node="hall", urgent=label == "Alarm"),
                        hh.event("end", eid, label, t, t + 40, node="hall", urgent=label == "Alarm")]
    for e in earlier:
        _pub(broker, "audiocap/hall/events", e)
    hh.wait_rows(history, lambda r: len(r) == len(earlier) // 2, 10, "the earlier captions stored")

    # A device that never opened the page sees today's captions.
    browser = chromium()
    browser.get(broker.page_url())
    dh.wait_until(lambda: not browser.find_element("id", "away").get_attribute("hidden"), 20, what="the away panel")
    first = {e["event-id"] for e in dh.dom(browser, "#away [data-history-entry]")}
    assert first == {e["event_id"] for e in earlier}
    assert browser.find_element("id", "away-title").text.lower() == "today so far"
    urgent = [e["event-id"] for e in dh.dom(browser, "#away-urgent [data-history-entry]")]
    assert urgent == [e["event_id"] for e in earlier if e["urgent"] and e["type"] == "end"]  # urgent first
    dh.screenshot(browser, "history-tv-first-visit")
    seen = dh.wait_until(lambda: browser.execute_script("return localStorage.getItem('audiocap.seen.audiocap')"), 5,
                         what="the device's last look stored")
    browser.get("about:blank")  # the person looks away (the page notes the time as it goes)
    seen = int(seen)

    # Meanwhile the real daemon captions a replay of AudioSet (three 10-s clips, at their
    # own pace), then exits.
    kitchen = daemons("kitchen", _short_replay(bal_train_dir, tmp_path), "--exit-at-end")
    kitchen.wait(120)
    ends = dh.wait_until(lambda: [e for _, e in dh.delivered(observer) if e["type"] == "end" and e["node"] == "kitchen"],
                         10,
                         what="the daemon's captions")
    rows = hh.wait_rows(history, lambda r: {x["event_id"] for x in r if x["end_ms"]} >= {e["event_id"] for e in ends},
                        20, "the daemon's captions in the history")

    # Back at the screen: the page lists exactly what ended since this device last looked.
    browser.get(broker.page_url())
    dh.wait_until(lambda: browser.find_element("id", "away-title").text.lower() == "while you were away", 20,
                  what="the away panel after the reload")
    away = dh.dom(browser, "#away [data-history-entry]")
    by_id = {e["event_id"]: e for e in ends}
    want = {e["event_id"] for e in ends}  # all of them ended after the page was left
    assert all(e["start"] > hh.iso(seen / 1000) for e in ends)
    assert {a["event-id"] for a in away} == want and want
    for a in away:
        e = by_id[a["event-id"]]
        assert (a["label"], a["node"], a["start"], a["end"]) == (e["label"], e["node"], e["start"], e["end"])
    summary = browser.find_element("id", "away-summary").text
    words = {"Animal": "Animal sounds"}
    for label in {by_id[i]["label"] for i in want}:
        assert words.get(label, label) in summary, summary
    listed = [e["event-id"] for e in dh.dom(browser, "[data-history-entry]")]
    assert len(listed) == len(set(listed))  # every caption once

    # The day at a glance: a mark for exactly the (class, hour) pairs of today's captions.
    dh.wait_until(lambda: dh.dom(browser, "[data-day-mark]"), 10, what="the day strip")
    next_midnight = datetime.fromordinal(day_from.toordinal() + 1).replace(tzinfo=TZ)
    hours = round((next_midnight.timestamp() - day_from.timestamp()) / 3600)  # 23 or 25 on a DST day
    stored = history.rows()
    want_marks = _marks_expected([r for r in stored if r["end_ms"]], day_from, hours)
    got_marks = {(m["label"], int(m["hour"])): int(m.get("urgent", 0)) for m in dh.dom(browser, "[data-day-mark]")}
    assert got_marks == want_marks
    # Enter on a mark (keyboard) lists its captions.
    label, hour = next(k for k, v in want_marks.items() if k[0] == ends[0]["label"])
    browser.execute_script("document.querySelector('[data-day-mark][tabindex=\"0\"]').focus()")
    from selenium.webdriver.common.keys import Keys

    for _ in range(len(got_marks) + 1):
        active = browser.switch_to.active_element
        if (active.get_attribute("data-label"), active.get_attribute("data-hour")) == (label, str(hour)):
            break
        active.send_keys(Keys.ARROW_RIGHT)
    active.send_keys(Keys.ENTER)
    lo = day_from.timestamp() * 1000 + hour * 3_600_000
    want_listed = {r["event_id"] for r in stored if r["label"] == label and r["start_ms"] < lo + 3_600_000
                   and (r["end_ms"] or 0) >= lo}
    dh.wait_until(lambda: {e["event-id"] for e in dh.dom(browser, "[data-day-entry]")} == want_listed, 10,
                  what=f"the captions of {label} at hour {hour}")

    # Looked at and checked on a TV and a phone.
    browser.execute_script("document.getElementById('today').scrollIntoView()")
    dh.screenshot(browser, "history-tv-today")
    browser.execute_script("window.scrollTo(0, 0)")
    dh.screenshot(browser, "history-tv")
    counts = {"tv": dh.axe_counts(dh.run_axe(browser, "history-tv"))}
    dh.set_viewport(browser, 412, 915, mobile=True)
    time.sleep(0.5)
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 412
    browser.execute_script("window.scrollTo(0, 0)")
    dh.screenshot(browser, "history-phone")
    counts["phone"] = dh.axe_counts(dh.run_axe(browser, "history-phone"))
    for where, c in counts.items():
        assert c["critical"] == 0 and c["serious"] == 0, (where, c)
    print("\naxe with the history views:", json.dumps(counts))


def test_the_display_account_may_ask_but_only_the_history_answers(broker, history_service):
    history = history_service()
    _pub(broker, "audiocap/hall/events", hh.event("start", "x1", "Speech", time.time() - 5, node="hall"))
    hh.wait_rows(history, lambda r: len(r) == 1, 10, "the caption stored")
    # The display's account, on the password listener with the shipped ACL.
    asker = hh.Requester(broker.daemon_port, username=dh.DISPLAY_USER, password=dh.DISPLAY_PASSWORD)
    try:
        answer = asker.ask({"q": "captions", "since": hh.iso(time.time() - 60)})
        assert answer["ok"] and [c["event_id"] for c in answer["captions"]] == ["x1"]
        # It cannot answer in the history's place, nor fake a digest.
        for topic in (asker.response, "audiocap/_history/digest/hall", "audiocap/_history/status"):
            r = dh.mqtt_tool("mosquitto_pub", broker.daemon_port, dh.DISPLAY_USER, "-q", "1", "-t", topic,
                             "-m", '{"ok": true, "captions": [], "fake": 1}')
            assert r.returncode == 0, r.stderr  # accepted and dropped by the broker (MQTT 3.1.1 has no refusal)
        time.sleep(1.0)
        assert None not in asker.answers
        assert not any(isinstance(v, dict) and v.get("fake") for v in asker.retained.values()), asker.retained
        assert asker.retained.get("audiocap/_history/status") == "online"
    finally:
        asker.close()


class _Link:
    """A TCP relay between the page and the broker's websockets listener that the test can
    cut (the screen's network gone; the broker and the history go on) and restore."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.up = True
        self.socks: list[socket.socket] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.listen_port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            if not self.up:
                conn.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.port))
            self.socks += [conn, upstream]
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for x in (a, b):
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self.up = False
        for x in self.socks:
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.socks = []

    def close(self) -> None:
        self.cut()
        self.server.close()


def test_captions_missed_while_the_page_was_cut_off_come_back_once(broker, browser, history_service):
    history = history_service()
    link = _Link(broker.ws_port)
    browser.get(broker.page_url(broker=f"ws://127.0.0.1:{link.listen_port}"))
    dh.wait_until(lambda: dh.dom(browser, "[data-connection=connected]"), 15, what="the page connected")
    t0 = time.time()
    _pub(broker, "audiocap/hall/events", hh.event("start", "live1", "Music", t0 - 30, node="hall"))
    _pub(broker, "audiocap/hall/events", hh.event("end", "live1", "Music", t0 - 30, t0 - 20, node="hall"))
    dh.wait_until(lambda: dh.dom(browser, "[data-history-entry][data-event-id=live1]"), 10, what="live1 listed")
    # The screen's network goes away (the broker and the history go on).
    link.cut()
    dh.wait_until(lambda: dh.dom(browser, "[data-connection=lost]"), 30, what="the page seeing its link lost")
    t1 = time.time()  # while it is cut off
    missed = [("gap1", "Speech", t1 - 0.5, t1 + 0.2), ("gap2", "Alarm", t1 + 0.3, t1 + 0.6)]
    for eid, label, a, b in missed:
        _pub(broker, "audiocap/hall/events", hh.event("start", eid, label, a, node="hall", urgent=label == "Alarm"))
        _pub(broker, "audiocap/hall/events", hh.event("end", eid, label, a, b, node="hall", urgent=label == "Alarm"))
    hh.wait_rows(history, lambda r: len([x for x in r if x["end_ms"]]) == 3, 10, "the missed captions stored")
    link.up = True
    dh.wait_until(lambda: dh.dom(browser, "[data-connection=connected]"), 30, what="the page back")
    got = dh.wait_until(lambda: (lambda ids: ids if {"gap1", "gap2"} <= set(ids) else None)(
        [e["event-id"] for e in dh.dom(browser, "#history [data-history-entry]")]), 15, what="the missed captions")
    assert got == ["gap2", "gap1", "live1"]  # in time order, each once
    link.close()
