"""Fixtures for the display tests: a real mosquitto serving display/ over its
websockets listener, a real headless Chromium driven by selenium, and the real
daemon replaying AudioSet bal_train tfrecords.

Nothing is mocked and nothing is downloaded: Chromium and chromedriver are
Debian's (scripts/setup installs them), selenium talks to /usr/bin/chromedriver
directly (selenium-manager is never asked), and the page's own libraries come
from display/node_modules (``npm ci --prefix display``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import display_helpers as dh  # noqa: E402
from display_helpers import dhelpers  # noqa: E402


@pytest.fixture
def broker(tmp_path):
    dh.require_display_parts()
    workdir = tmp_path / "broker"
    workdir.mkdir()
    b = dh.DisplayBroker(workdir)
    b.start()
    yield b
    b.stop()


# What the page records about itself for the test: when each caption element
# appeared (wall clock, ms). Installed before the page's own script runs.
_WATCH = """
window.__appeared = {};
new MutationObserver(function (records) {
  var t = Date.now();
  records.forEach(function (r) {
    r.addedNodes.forEach(function (n) {
      if (n.nodeType !== 1) return;
      var kind = n.hasAttribute('data-active-caption') ? 'start' : n.hasAttribute('data-history-entry') ? 'end' : '';
      var id = n.getAttribute('data-event-id');
      if (kind && id && !((kind + ':' + id) in window.__appeared)) window.__appeared[kind + ':' + id] = t;
    });
  });
}).observe(document, {subtree: true, childList: true});
"""


@pytest.fixture
def chromium(tmp_path):
    """Starts headless Chromium sessions, ``start(*extra_args)``, each with a fresh
    profile, as a 1080p TV in en-GB and Europe/Berlin; quits them at the end."""
    dh.require_display_parts()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    drivers = []

    def start(*extra_args: str):
        n = len(drivers)
        options = webdriver.ChromeOptions()
        options.binary_location = str(dh.CHROMIUM)
        for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--hide-scrollbars",
                    f"--user-data-dir={tmp_path / f'chromium-profile-{n}'}", "--window-size=1920,1080", *extra_args):
            options.add_argument(arg)
        env = dict(os.environ, TZ=dh.BROWSER_TZ)
        service = Service(executable_path=str(dh.CHROMEDRIVER), env=env,
                          log_output=str(tmp_path / f"chromedriver-{n}.log"))
        driver = webdriver.Chrome(service=service, options=options)
        drivers.append(driver)
        driver.set_script_timeout(60)
        # en-GB: 24-hour local times the test can derive; the zone comes from TZ above.
        driver.execute_cdp_cmd("Emulation.setLocaleOverride", {"locale": "en-GB"})
        # Runs before the page's scripts on every load.
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": _WATCH})
        dh.set_viewport(driver, 1920, 1080)  # a 1080p TV unless a test says otherwise
        return driver

    yield start
    for driver in drivers:
        driver.quit()


@pytest.fixture
def browser(chromium):
    return chromium()


# --- The daemon ----------------------------------------------------------------------------

@pytest.fixture
def replay_subset(bal_train_dir, tmp_path):
    """A folder of symlinks to some bal_train tfrecords (``make(first, count)``), so a
    replay is as long as a test needs; the data stays in ../shared."""

    def make(name: str, first: int, count: int) -> Path:
        files = sorted(bal_train_dir.glob("*.tfrecord"))[first : first + count]
        d = tmp_path / f"replay-{name}"
        d.mkdir()
        for f in files:
            (d / f.name).symlink_to(f)
        return d

    return make


@pytest.fixture
def daemons(broker):
    """Starts ``audiocapd`` processes against the broker's daemon listener (password
    account); kills what is left at the end."""
    procs: list[subprocess.Popen] = []

    def start(node: str, replay_dir: Path, *extra: str) -> subprocess.Popen:
        log = open(broker.workdir / f"audiocapd-{node}.log", "w")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(
            dhelpers.daemon_cmd("--source", f"replay:{replay_dir}", "--sink", "mqtt", "--node", node,
                                "--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker.daemon_port),
                                "--mqtt-user", dh.DAEMON_USER, "--runtime", "litert", *extra),
            cwd=dhelpers.REPO, env=dhelpers.daemon_env({"AUDIOCAP_MQTT_PASSWORD": dh.DAEMON_PASSWORD}),
            stdout=subprocess.DEVNULL, stderr=log,
        )
        log.close()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            dhelpers.stop_process(proc, signal.SIGKILL)


@pytest.fixture
def observer(broker):
    """A paho subscriber on the anonymous listener: what the broker delivered, and when."""
    sub = dhelpers.Subscriber(broker.port, ["audiocap/#"])
    yield sub
    sub.close()




@pytest.fixture
def history_service(broker, tmp_path):
    """``audiocap-history`` on the daemon listener with its own account (the shipped ACL's
    ``history`` user); ``start()`` returns it, running."""
    sys.path.insert(0, str(dhelpers.REPO / "tests" / "history"))
    import hhelpers

    made = []

    def start():
        h = hhelpers.History(tmp_path, broker.daemon_port, None, "--mqtt-user", dh.HISTORY_USER,
                             env={"AUDIOCAP_MQTT_PASSWORD": dh.HISTORY_PASSWORD})
        h.start()
        made.append(h)
        return h

    yield start
    hhelpers.kill_all([h.proc for h in made if h.proc is not None])
