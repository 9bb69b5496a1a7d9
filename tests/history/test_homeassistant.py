"""The digest's Home Assistant sensors: discovery checked with Home Assistant's own schemas
(tests/daemon/ha_schema_check.py in .venv-homeassistant), and their templates rendered by
jinja2 from that venv on a real digest."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

import hhelpers as hh
from hhelpers import event

CHECKER = hh.REPO / "tests" / "daemon" / "ha_schema_check.py"
_RENDER = """
import json, sys, jinja2
data = json.load(sys.stdin)
env = jinja2.Environment()
print(json.dumps({k: env.from_string(t).render(value_json=data["digest"]) for k, t in data["templates"].items()}))
"""


def _ha_python() -> str:
    python = os.environ.get("AUDIOCAP_HA_PYTHON") or str(hh.REPO / ".venv-homeassistant" / "bin" / "python")
    if not Path(python).exists():
        pytest.skip(f"Home Assistant is not installed at {python} (scripts/setup makes .venv-homeassistant)")
    return python


def test_digest_sensors_pass_home_assistants_schemas_and_render(broker, history_factory, publisher):
    python = _ha_python()
    history = history_factory()
    history.start()
    sub = hh.Requester(broker.port)
    sub.client.subscribe("homeassistant/#", 1)
    now = time.time()
    for e in [event("start", "a1", "Alarm", now - 300, node="hall", urgent=True),
              event("end", "a1", "Alarm", now - 300, now - 290, node="hall", urgent=True),
              event("start", "m1", "Music", now - 100, node="hall"),
              event("end", "m1", "Music", now - 100, now - 50, node="hall")]:
        publisher.send("audiocap/hall/events", e)
    digest = sub.wait_retained("audiocap/_history/digest/hall", lambda d: d["total_today"] == 2)
    configs = {}
    deadline = time.monotonic() + 10
    while len(configs) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
        configs = {t: c for t, c in sub.retained.items() if t.startswith("homeassistant/sensor/")}
    sub.close()
    assert sorted(configs) == [f"homeassistant/sensor/hall_history_{k}/config"
                               for k in ("last_urgent", "sounds_today", "urgent_today")]
    for c in configs.values():  # on the node's own device, available with the history
        assert c["device"]["identifiers"] == ["audiocap_hall"] and c["availability_topic"] == "audiocap/_history/status"
    proc = subprocess.run([python, str(CHECKER)], input=json.dumps(configs), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert all(r.get("ok") for r in report["results"].values()), report
    templates = {t.split("/")[2]: c["value_template"] for t, c in configs.items()}
    templates["attributes"] = configs["homeassistant/sensor/hall_history_last_urgent/config"]["json_attributes_template"]
    proc = subprocess.run([python, "-c", _RENDER], input=json.dumps({"digest": digest, "templates": templates}),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shown = json.loads(proc.stdout)
    assert shown["hall_history_sounds_today"] == "2" and shown["hall_history_urgent_today"] == "1"
    assert shown["hall_history_last_urgent"] == hh.iso(now - 300)
    assert json.loads(shown["attributes"])["label"] == "Alarm"
