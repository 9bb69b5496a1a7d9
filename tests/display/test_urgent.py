"""Urgent captions on the display: first, larger, flashing and vibrating even with the gentle
effects off, kept until acknowledged (from the keyboard) or ended; axe-clean while alerting."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import display_helpers as dh

# Records what the page asks of the vibration motor (headless Chromium has none).
_BUZZ = "window.__buzz = []; navigator.vibrate = function (p) { window.__buzz.push(p); return true; };"


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _publish(broker, node: str, payload: dict) -> None:
    dh.mqtt_tool("mosquitto_pub", broker.daemon_port, dh.DAEMON_USER, "-q", "1", "-t", f"audiocap/{node}/events",
                 "-m", json.dumps(payload), check=True)


def _event(type_: str, event_id: str, label: str, urgent: bool, t0: float, end: float | None = None) -> dict:
    return {"schema": 1, "event_id": event_id, "type": type_, "label": label, "caption": f"[{label}]",
            "score": 0.9, "start": _iso(t0), "end": _iso(end) if end else None, "node": "hall",
            "source": "mic:default", "model": "audiocap-home@0.1", "urgent": urgent, "level_dbfs": -14.0}


def test_an_urgent_caption_alerts_until_acknowledged_or_ended(broker, browser):
    from selenium.webdriver.common.keys import Keys

    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": _BUZZ})
    # Gentle effects off (reduced motion turns the flash and vibrate switches off).
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia",
                            {"features": [{"name": "prefers-reduced-motion", "value": "reduce"}]})
    browser.get(broker.page_url())
    dh.wait_until(lambda: dh.dom(browser, "[data-connection=connected]"), 15, what="the page connected")
    assert not browser.find_element("id", "opt-flash").is_selected()
    assert not browser.find_element("id", "opt-vibrate").is_selected()
    t0 = time.time()
    _publish(broker, "hall", _event("start", "s1", "Speech", False, t0))
    dh.wait_until(lambda: dh.dom(browser, "[data-active-caption][data-label=Speech]"), 10, what="speech on now")
    assert browser.execute_script("return window.__buzz.length") == 0  # not urgent, effects off: no buzz
    sent = time.time()
    _publish(broker, "hall", _event("start", "a1", "Alarm", True, t0 + 1))
    alert = dh.wait_until(lambda: dh.dom(browser, "[data-alert][data-label=Alarm]"), 10, what="the alarm alert")
    shown_after = time.time() - sent
    assert alert[0]["event-id"] == "a1"
    # First and larger: the alert sits above the sounds on now, and the alarm's card leads its room.
    order = browser.execute_script(
        "var a = document.getElementById('alerts'), n = document.getElementById('now');"
        "return [!a.hidden, a.compareDocumentPosition(n) & Node.DOCUMENT_POSITION_FOLLOWING,"
        " Array.from(document.querySelectorAll('[data-node=hall][data-active-caption]')).map("
        "  function (c) { return c.getAttribute('data-label'); }),"
        " parseFloat(getComputedStyle(document.querySelector('.alert-words')).fontSize),"
        " parseFloat(getComputedStyle(document.querySelector('[data-label=Speech] .words')).fontSize)]")
    assert order[0] and order[1] and order[2] == ["Alarm", "Speech"], order
    assert order[3] > order[4] >= 48, order
    # It flashes and vibrates although the gentle effects are off, and interrupts the screen reader.
    assert "alerting" in browser.find_element("tag name", "body").get_attribute("class")
    pulse = browser.execute_script(
        "var s = getComputedStyle(document.body, '::before'); return [s.animationName, s.animationDuration];")
    assert pulse[0] == "alert-pulse" and float(pulse[1].rstrip("s")) >= 1.0  # under 1 flash/s
    assert browser.execute_script("return window.__buzz.length") >= 1
    assert "Alert: Alarm" in browser.find_element("id", "announce-urgent").get_attribute("textContent")
    assert "ALERT: Alarm" in browser.title
    dh.screenshot(browser, "urgent-1080p")
    counts = dh.axe_counts(dh.run_axe(browser, "urgent"))
    assert counts["critical"] == 0 and counts["serious"] == 0, counts

    # Acknowledged from the keyboard: Tab reaches the button, Enter dismisses, the flashing stops;
    # the sound itself stays on now until it ends.
    button = browser.find_element("css selector", "[data-alert] .alert-ack")
    assert button.get_attribute("aria-label") == "Acknowledge Alarm in hall"
    browser.execute_script("document.querySelector('.skip').focus()")
    for _ in range(10):
        browser.switch_to.active_element.send_keys(Keys.TAB)
        if browser.switch_to.active_element.get_attribute("class") == "button alert-ack":
            break
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    dh.wait_until(lambda: not dh.dom(browser, "[data-alert]"), 5, what="the alert acknowledged")
    assert "alerting" not in (browser.find_element("tag name", "body").get_attribute("class") or "")
    assert browser.find_element("id", "alerts").get_attribute("hidden") is not None
    assert dh.dom(browser, "[data-active-caption][data-label=Alarm]")

    # A new urgent sound that ends before anyone acknowledges it leaves the alerts by itself.
    _publish(broker, "hall", _event("start", "d1", "Doorbell or knock", True, t0 + 5))
    dh.wait_until(lambda: dh.dom(browser, "[data-alert][data-event-id=d1]"), 10, what="the door alert")
    _publish(broker, "hall", _event("end", "d1", "Doorbell or knock", True, t0 + 5, t0 + 7))
    dh.wait_until(lambda: not dh.dom(browser, "[data-alert]"), 10, what="the door alert gone with its sound")
    assert dh.dom(browser, "[data-history-entry][data-event-id=d1]")
    (dh.SHOTS / "urgent-figures.json").write_text(json.dumps({"publish_to_alert_s": round(shown_after, 3),
                                                               "axe": counts}))
