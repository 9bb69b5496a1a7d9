"""The caption display in a real headless Chromium, against a real mosquitto
serving display/ and the real daemon replaying AudioSet bal_train.

Every expectation is derived from what the broker delivered to an independent
paho observer in the same run. Figures (seconds from delivery to display, axe
counts) and screenshots go to runs/display/.
"""

from __future__ import annotations

import json
import re
import signal
import ssl
import statistics
import subprocess
import time
import urllib.request
from datetime import datetime
from zoneinfo import ZoneInfo

import display_helpers as dh
from display_helpers import dhelpers


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
    """Seconds from the broker's delivery to the observer to the element appearing in the
    page (``start``, ``end``), and from the sound's start on the audio clock to its card
    appearing (``sound_to_card``: the event tracker's confirmation time included)."""
    appeared = driver.execute_script("return window.__appeared")
    out: dict[str, list[float]] = {"start": [], "end": [], "sound_to_card": []}
    for t, e in dh.delivered(observer):
        key = f"{e['type']}:{e['event_id']}"
        if key in appeared:
            out[e["type"]].append(appeared[key] / 1000.0 - t)
            if e["type"] == "start":
                sound = datetime.fromisoformat(e["start"].replace("Z", "+00:00")).timestamp()
                out["sound_to_card"].append(appeared[key] / 1000.0 - sound)
    return out


def _record(name: str, figures: dict) -> None:
    dh.SHOTS.mkdir(parents=True, exist_ok=True)
    (dh.SHOTS / f"{name}.json").write_text(json.dumps(figures, indent=1))
    print(f"\n{name}: {json.dumps(figures)}")


def test_live_captions_per_room_pass_axe_and_a_sigkilled_room_goes_offline(
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
    # The window title names what is on (read in one go: captions come and go).
    title, shown = browser.execute_script(
        "return [document.title, Array.from(document.querySelectorAll('[data-active-caption] .words'))"
        ".map(function (e) { return e.textContent; })]")
    assert shown and all(w in title for w in shown), (title, shown)
    # A caption that starts while the page watches gets the (default-on) glow.
    assert dh.dom(browser, "[data-active-caption].flash")
    # ...and is announced in the polite live region, in words.
    announced = browser.find_element("css selector", "[aria-live=polite]").get_attribute("textContent")
    assert any(f"{w} started" in announced for w in ("Speech", "Animal sounds", "Music", "Vehicle")), announced

    # Ended captions go to the history with their payload times.
    dh.wait_until(lambda: len(dh.dom(browser, "[data-history-entry]")) >= 2, 40, what="two history entries")
    dh.wait_until(lambda: dh.dom(browser, "[data-active-caption][data-node=kitchen]"), 40,
                  what="a kitchen caption on now")
    entries = _check_history(browser, observer)
    assert {e["node"] for e in entries} <= {"kitchen", "hall"}
    dh.screenshot(browser, "tv-1080p")
    axe = {"tv-live": dh.axe_counts(dh.run_axe(browser, "tv-live"))}
    dh.set_viewport(browser, 412, 915, mobile=True)
    time.sleep(0.5)
    sizes = browser.execute_script(
        "return Array.from(document.querySelectorAll('[data-active-caption] .words'))"
        ".map(function (e) { return parseFloat(getComputedStyle(e).fontSize); })")
    assert sizes and min(sizes) >= 48, sizes
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 412
    dh.screenshot(browser, "phone-portrait")
    axe["phone-live"] = dh.axe_counts(dh.run_axe(browser, "phone-live"))
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
    axe["tv-node-offline"] = dh.axe_counts(dh.run_axe(browser, "tv-node-offline"))

    lat = _latencies(browser, observer)
    assert lat["start"] and lat["end"]
    _record("axe", axe)
    for state, counts in axe.items():
        assert counts["critical"] == counts["serious"] == 0, (state, counts)

    def summary(v: list[float]) -> dict:
        return {"n": len(v), "median": round(statistics.median(v), 3), "max": round(max(v), 3)}

    _record("latency", {
        "shown_offline_after_sigkill_s": round(offline_after, 3),
        "delivery_to_display_s": {"start": summary(lat["start"]), "end": summary(lat["end"])},
        "sound_start_to_card_s": summary(lat["sound_to_card"]),
    })
    # The page is told about as soon as the observer (same broker, same machine).
    assert max(lat["start"] + lat["end"]) < 2.0, lat

    # ?node= shows one room: the hall's levels arrive, the kitchen's retained status does not.
    browser.get(broker.page_url(node="hall"))
    dh.wait_until(lambda: dh.dom(browser, "[data-node-group=hall] [data-scores-t]"), 15, what="the hall's levels")
    assert {s["node"] for s in dh.dom(browser, "[data-node-status]")} == {"hall"}


def test_ended_captions_fill_the_history_and_the_display_account_cannot_publish(
    broker, browser, daemons, observer, replay_subset
):
    browser.get(broker.page_url(history="500"))
    dh.wait_until(lambda: dh.dom(browser, "[data-connection=connected]"), 15, what="the page connected")
    attic = daemons("attic", replay_subset("attic", 0, 12), "--pace", "fast", "--exit-at-end")
    assert attic.wait(90) == 0, (broker.workdir / "audiocapd-attic.log").read_text()[-2000:]
    # A clean stop: every caption was ended, then "offline".
    assert observer.wait_for(lambda m: observer.payloads("attic/status")[-1:] == [b"offline"], 10)
    ends = [e for _, e in dh.delivered(observer) if e["type"] == "end"]
    assert len(ends) >= 5, "the replay must end several captions for this test to mean anything"
    entries = dh.wait_until(
        lambda: (lambda got: got if len(got) >= len(ends) else None)(dh.dom(browser, "[data-history-entry]")),
        15, what=f"{len(ends)} history entries")
    _check_history(browser, observer)
    # Newest start first, each once (QoS 1 may deliver twice; the page shows it once);
    # captions that started together are listed latest-ended first.
    first = {}
    for e in ends:
        first.setdefault(e["event_id"], e)
    arrived_last_first = list(first.values())[::-1]
    want = [e["event_id"] for e in sorted(
        arrived_last_first, key=lambda e: datetime.fromisoformat(e["start"].replace("Z", "+00:00")), reverse=True)]
    assert [e["event-id"] for e in entries] == want
    assert not dh.dom(browser, "[data-active-caption]")
    assert dh.dom(browser, "[data-node-status][data-node=attic]")[0]["state"] == "offline"

    # The display's account is read-only (display/mosquitto.acl): what it publishes never
    # reaches a subscriber; the daemon's account, the control, does.
    fake = {"schema": 1, "event_id": "fake", "type": "end", "label": "Speech", "caption": "[Speech]", "score": 1,
            "start": "2026-01-01T00:00:00.000Z", "end": "2026-01-01T00:00:01.000Z", "node": "attic"}
    control = dict(fake, event_id="control", label="Music", caption="[Music]", urgent=True, level_db=-20.5)
    for user, payload in ((dh.DISPLAY_USER, fake), (dh.DAEMON_USER, control)):
        dh.mqtt_tool("mosquitto_pub", broker.daemon_port, user, "-q", "1", "-t", "audiocap/attic/events",
                     "-m", json.dumps(payload), check=True)
    dh.wait_until(lambda: dh.dom(browser, "[data-history-entry][data-event-id=control]"), 5,
                  what="the control event (with keys the page does not know) in the history")
    assert not dh.dom(browser, "[data-history-entry][data-event-id=fake]")
    assert "fake" not in {e["event_id"] for _, e in dh.delivered(observer)}


def test_page_reconnects_by_itself_after_a_broker_restart(broker, browser, daemons, observer, bal_train_dir):
    daemons("porch", bal_train_dir)
    browser.get(broker.page_url(credentials_in="query"))  # the other form of the login
    dh.wait_until(lambda: dh.dom(browser, "[data-connection=connected]"), 15, what="the page connected")
    dh.wait_until(lambda: dh.dom(browser, "[data-node-status][data-node=porch][data-state=online]"), 30,
                  what="porch online")
    t_before = dh.wait_until(lambda: (dh.dom(browser, "[data-scores-t]") or [{}])[0].get("scores-t"), 15,
                             what="live levels")
    assert not browser.find_element("id", "banner").is_displayed()

    broker.stop()
    banner = dh.wait_until(lambda: (lambda b: b if b.is_displayed() else None)(browser.find_element("id", "banner")),
                           5, what="the connection banner")
    assert "not live" in banner.text
    assert not dh.dom(browser, "[data-connection=connected]")
    dh.screenshot(browser, "tv-1080p-connection-lost")
    counts = dh.axe_counts(dh.run_axe(browser, "connection-lost"))
    assert counts["critical"] == counts["serious"] == 0, counts

    restarted = time.monotonic()
    broker.start()
    dh.wait_until(lambda: dh.dom(browser, "[data-connection=connected]"), 15, what="the page reconnected")
    reconnected_after = time.monotonic() - restarted
    assert not browser.find_element("id", "banner").is_displayed()
    # Live again: levels from a window scored after the restart, the node online.
    dh.wait_until(lambda: (dh.dom(browser, "[data-scores-t]") or [{}])[0].get("scores-t", "") > t_before, 15,
                  what="levels newer than before the restart")
    assert dh.dom(browser, "[data-node-status][data-node=porch]")[0]["state"] == "online"
    _record("reconnect", {"reconnected_after_broker_start_s": round(reconnected_after, 3)})


def test_shipped_broker_config_serves_the_page_over_http_and_https_with_a_read_only_display(tmp_path, chromium):
    """display/mosquitto.conf as shipped (its wss block switched on), only ports and
    paths made local: it must start, serve the page (https to an HTTP/1.1 client), enforce
    the accounts, and carry a browser's MQTT over wss."""
    dh.require_display_parts()
    ports = {p: str(dhelpers.free_port()) for p in ("1883", "9001", "9443")}
    cert, key = tmp_path / "display.crt", tmp_path / "display.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    passwd = dh.write_password_file(tmp_path / "audiocap.passwd")
    conf = (dh.DISPLAY / "mosquitto.conf").read_text()
    conf = re.sub(r"^#(listener 9443|protocol|http_dir|certfile|keyfile|tls_version)", r"\1", conf, flags=re.M)
    conf = re.sub(r"^listener (\d+)$", lambda m: f"listener {ports[m.group(1)]} 127.0.0.1", conf, flags=re.M)
    for shipped, local in (("/etc/mosquitto/audiocap.passwd", passwd), ("/etc/mosquitto/audiocap.acl",
                           dh.DISPLAY / "mosquitto.acl"), ("/usr/local/share/audiocap/display", dh.DISPLAY),
                           ("/etc/mosquitto/certs/display.crt", cert), ("/etc/mosquitto/certs/display.key", key)):
        assert shipped in conf
        conf = conf.replace(shipped, str(local))
    (tmp_path / "mosquitto.conf").write_text(f"user root\nlog_dest file {tmp_path / 'mosquitto.log'}\n" + conf)
    proc = subprocess.Popen(["mosquitto", "-c", str(tmp_path / "mosquitto.conf")], stderr=subprocess.DEVNULL)
    try:
        for p in ports.values():
            dhelpers.wait_port(int(p))
        page = urllib.request.urlopen(f"http://127.0.0.1:{ports['9001']}/index.html", timeout=5).read()
        assert b"data-connection" in page
        tls = ssl.create_default_context(cafile=str(cert))
        page = urllib.request.urlopen(f"https://127.0.0.1:{ports['9443']}/index.html", timeout=5, context=tls).read()
        assert b"data-connection" in page
        lib = urllib.request.urlopen(f"https://127.0.0.1:{ports['9443']}/node_modules/mqtt/dist/mqtt.min.js",
                                     timeout=5, context=tls).read()
        assert len(lib) > 10_000

        port = ports["1883"]
        assert dh.mqtt_tool("mosquitto_sub", port, None, "-t", "audiocap/#", "-C", "1", "-W", "3").returncode != 0
        # The display reads; what it publishes is dropped. Each round publishes a forgery
        # first, so a reader that got anything but the daemon's message would see it.
        reader = dh.mqtt_tool("mosquitto_sub", port, dh.DISPLAY_USER, "-t", "audiocap/#", "-C", "1", "-W", "15",
                              popen=True)
        while reader.poll() is None:
            dh.mqtt_tool("mosquitto_pub", port, dh.DISPLAY_USER, "-t", "audiocap/x/status", "-m", "forged", "-q", "1",
                         check=True)
            dh.mqtt_tool("mosquitto_pub", port, dh.DAEMON_USER, "-t", "audiocap/x/status", "-m", "online", "-q", "1",
                         check=True)
            time.sleep(0.3)
        assert reader.stdout.read().split() == ["online"]

        # A browser: the page over http, MQTT over wss (the form that works with Debian's
        # mosquitto, see docs/display.md), login after '#'. Chromium trusts exactly this test
        # key (its SPKI hash), as a screen would trust the LAN's CA.
        spki = subprocess.run(f"openssl x509 -in {cert} -pubkey -noout | openssl pkey -pubin -outform der"
                              " | openssl dgst -sha256 -binary | base64", shell=True, check=True,
                              capture_output=True, text=True).stdout.strip()
        screen = chromium(f"--ignore-certificate-errors-spki-list={spki}")
        screen.get(f"http://127.0.0.1:{ports['9001']}/index.html?broker=wss://127.0.0.1:{ports['9443']}"
                   f"#user={dh.DISPLAY_USER}&password={dh.DISPLAY_PASSWORD}")
        dh.wait_until(lambda: dh.dom(screen, "[data-connection=connected]"), 15, what="the page connected over wss")
        dh.mqtt_tool("mosquitto_pub", port, dh.DAEMON_USER, "-t", "audiocap/den/status", "-m", "online", "-q", "1",
                     "-r", check=True)
        dh.wait_until(lambda: dh.dom(screen, "[data-node-status][data-node=den][data-state=online]"), 10,
                      what="a status delivered over wss")
    finally:
        proc.terminate()
        proc.wait(10)


def test_reduced_motion_turns_the_flash_and_vibration_off_and_the_switches_work_from_the_keyboard(broker, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    def switches() -> dict[str, bool]:
        return {k: browser.find_element("id", f"opt-{k}").is_selected() for k in ("flash", "vibrate", "scores")}

    browser.get(broker.page_url())
    assert switches() == {"flash": True, "vibrate": True, "scores": True}
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia",
                            {"features": [{"name": "prefers-reduced-motion", "value": "reduce"}]})
    browser.refresh()  # (a get() of the same address with a '#' would not reload)
    assert switches() == {"flash": False, "vibrate": False, "scores": True}
    # Tab to the settings, open them with Enter, Tab to the flash switch, turn it on with the
    # space bar; the choice is remembered.
    for _ in range(15):
        ActionChains(browser).send_keys(Keys.TAB).perform()
        active = browser.switch_to.active_element
        if active.tag_name == "summary":
            ActionChains(browser).send_keys(Keys.ENTER).perform()
        if active.get_attribute("id") == "opt-flash":
            break
    assert browser.switch_to.active_element.get_attribute("id") == "opt-flash"
    ActionChains(browser).send_keys(Keys.SPACE).perform()
    assert switches()["flash"] is True
    browser.execute_script("window.__before_reload = true")
    browser.refresh()
    assert browser.execute_script("return window.__before_reload === undefined")  # a new page
    assert switches()["flash"] is True


def test_the_axe_harness_can_fail(broker, browser):
    """The accessibility checks above mean something: text at 4.5:1 passes AA but
    not the AAA contrast the page promises, and axe (as run here) says so."""
    browser.get(broker.page_url())
    browser.execute_script(
        "var p = document.createElement('p'); p.textContent = 'grey on grey';"
        "p.style.cssText = 'color: #767676; background: #ffffff; font-size: 16px';"
        "document.querySelector('main').appendChild(p);")
    result = dh.run_axe(browser, "harness-check")
    assert "color-contrast-enhanced" in {v["id"] for v in result["violations"]}
    assert dh.axe_counts(result)["serious"] >= 1


def test_a_refused_login_is_named_on_the_page(broker, browser):
    browser.get(broker.page_url(password="wrong"))
    banner = dh.wait_until(lambda: (lambda b: b if b.is_displayed() else None)(browser.find_element("id", "banner")),
                           10, what="the connection banner")
    dh.wait_until(lambda: "refused the login" in banner.text, 10, what="the refusal named in the banner")
    assert not dh.dom(browser, "[data-connection=connected]")
