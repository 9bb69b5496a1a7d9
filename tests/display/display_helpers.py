"""What the display tests share: the broker with a websockets listener serving
display/, the browser's helpers (viewport, screenshots, DOM reads, axe-core)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

import helpers

sys.path.insert(0, str(helpers.REPO / "tests" / "daemon"))
import dhelpers  # noqa: E402

DISPLAY = helpers.REPO / "display"
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = helpers.REPO / "runs" / "display"
DAEMON_USER, DAEMON_PASSWORD = "audiocapd", "daemon-secret"
DISPLAY_USER, DISPLAY_PASSWORD = "display", "display-secret"
HISTORY_USER, HISTORY_PASSWORD = "history", "history-secret"
ACCOUNTS = {DAEMON_USER: DAEMON_PASSWORD, DISPLAY_USER: DISPLAY_PASSWORD,
            HISTORY_USER: HISTORY_PASSWORD}  # the users of display/mosquitto.acl
# The browser runs in a zone and language of our choosing, so the test can
# derive the local times the page must show.
BROWSER_TZ = "Europe/Berlin"


def require_display_parts() -> None:
    """The display tests must run in CI: a missing part fails, with the fix."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: scripts/setup installs chromium and chromium-driver")
    for lib in ("mqtt/dist/mqtt.min.js", "axe-core/axe.min.js"):
        if not (DISPLAY / "node_modules" / lib).is_file():
            pytest.fail(f"display/node_modules/{lib} missing: run `npm ci --prefix display` (scripts/setup does)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.fail("selenium missing: pip install -e '.[test]'")


def write_password_file(path: Path) -> Path:
    """A mosquitto password file with ACCOUNTS (mosquitto_passwd hashes them)."""
    path.write_text("")
    for user, password in ACCOUNTS.items():
        subprocess.run(["mosquitto_passwd", "-b", str(path), user, password], check=True)
    return path


def mqtt_tool(tool: str, port: int | str, user: str | None, *args: str, **kw):
    """``mosquitto_pub``/``mosquitto_sub`` on 127.0.0.1:port as ``user`` (None: anonymous);
    Popen when ``popen=True`` (stdout piped), else run to completion."""
    auth = ["-u", user, "-P", ACCOUNTS[user]] if user else []
    cmd = [tool, "-h", "127.0.0.1", "-p", str(port), *auth, *args]
    if kw.pop("popen", False):
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=15, **kw)


class DisplayBroker(dhelpers.Mosquitto):
    """The test broker: an anonymous listener for the test's own observers
    (``port``), the daemon's listener with a password (``daemon_port``) and
    the display's websockets listener serving display/ (``ws_port``). The
    password listeners use the shipped ACL (display/mosquitto.acl)."""

    def __init__(self, workdir: Path) -> None:
        self.daemon_port = dhelpers.free_port()
        self.ws_port = dhelpers.free_port()
        passwd = write_password_file(workdir / "passwd")
        auth = f"allow_anonymous false\npassword_file {passwd}\nacl_file {DISPLAY / 'mosquitto.acl'}\n"
        super().__init__(workdir, extra_conf=(
            f"listener {self.daemon_port} 127.0.0.1\n{auth}"
            f"listener {self.ws_port} 127.0.0.1\nprotocol websockets\nhttp_dir {DISPLAY}\n{auth}"
        ))
        # Authentication per listener; must come before the first listener.
        self.conf.write_text("per_listener_settings true\n" + self.conf.read_text())

    def start(self) -> None:
        super().start()
        dhelpers.wait_port(self.ws_port)
        dhelpers.wait_port(self.daemon_port)

    def page_url(self, credentials_in: str = "fragment", **params: str) -> str:
        """The page's address with the display's login after ``#`` (as docs/display.md
        advises) or in the query (``credentials_in="query"``); ``params`` may override."""
        login = {"user": DISPLAY_USER, "password": DISPLAY_PASSWORD}
        for k in login.keys() & params.keys():
            login[k] = params.pop(k)
        query, fragment = (params, login) if credentials_in == "fragment" else ({**login, **params}, {})
        url = f"http://127.0.0.1:{self.ws_port}/index.html?" + urllib.parse.urlencode(query)
        return url + ("#" + urllib.parse.urlencode(fragment) if fragment else "")


def set_viewport(driver, width: int, height: int, mobile: bool = False) -> None:
    """The CSS viewport exactly: headless Chromium's --window-size is not the viewport
    (1920x1080 gives a 937 px high page)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})


def screenshot(driver, name: str) -> Path:
    """Saves runs/display/NAME.png with running animations (the new-caption glow,
    the level bars' easing) at their end, so the picture shows the settled page
    (and an urgent pulse at its brightest)."""
    # An endless animation (the urgent pulse) cannot finish: it is held at its peak instead.
    driver.execute_script("document.getAnimations().forEach(function (a) {"
                          " try { a.finish(); } catch (e) { a.pause(); a.currentTime = 800; } });")
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Polls ``predicate`` until it returns a truthy value; returns it, or fails naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def dom(driver, selector: str) -> list[dict[str, str]]:
    """The data-* attributes (and visible text) of every element matching ``selector``."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map(function (e) {"
        "  var o = {text: e.innerText}; Array.from(e.attributes).forEach(function (a) {"
        "    if (a.name.indexOf('data-') === 0) o[a.name.slice(5)] = a.value; }); return o; });", selector)


AXE_TAGS = ["wcag2a", "wcag2aa", "wcag2aaa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"]


def run_axe(driver, name: str) -> dict:
    """axe-core (display/node_modules) on the page as it is now; writes the full result to runs/display."""
    if not driver.execute_script("return typeof window.axe !== 'undefined'"):
        driver.execute_script((DISPLAY / "node_modules" / "axe-core" / "axe.min.js").read_text())
    result = driver.execute_async_script(
        "var done = arguments[arguments.length - 1];"
        "axe.run(document, {runOnly: {type: 'tag', values: arguments[0]}, resultTypes: ['violations']})"
        "  .then(function (r) { done({violations: r.violations.map(function (v) {"
        "    return {id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map(function (n) {"
        "      return {target: n.target, summary: n.failureSummary}; })}; }),"
        "    passes: r.passes.length, incomplete: r.incomplete.length, version: axe.version}); })"
        "  .catch(function (e) { done({error: String(e)}); });", AXE_TAGS)
    assert "error" not in result, result
    SHOTS.mkdir(parents=True, exist_ok=True)
    (SHOTS / f"axe-{name}.json").write_text(json.dumps(result, indent=1))
    return result


def axe_counts(result: dict) -> dict[str, int]:
    counts = {"critical": 0, "serious": 0, "moderate": 0, "minor": 0}
    for v in result["violations"]:
        counts[v["impact"] or "minor"] += len(v["nodes"])
    return counts


def delivered(sub: dhelpers.Subscriber, suffix: str = "/events") -> list[tuple[float, dict]]:
    """(arrival wall-clock time, payload) of every event the observer got."""
    with sub.cond:
        return [(t, json.loads(p)) for (topic, p, _), t in zip(sub.messages, sub.times) if topic.endswith(suffix)]
