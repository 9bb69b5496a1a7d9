"""``audiocapd --retire-node NAME``: forget a node on the broker.

Every node leaves retained messages behind: its ``status``, its per-class
``state/<Class>`` and its Home Assistant discovery configs. Nothing else
removes them, so every node name ever used (test runs, renamed rooms) stays
on every display and in Home Assistant. Retiring a node collects the
retained messages under ``<prefix>/<NAME>/``, the caption history's digest of
it and the discovery configs whose device is ``audiocap_<NAME>`` (the
daemon's and the history's sensors), and clears each (an empty retained message,
which MQTT defines as "delete"); Home Assistant then removes the entities.

A node that is online is refused: its daemon would say everything again at
its next reconnect. Stop it first.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass

from daemon.config import MqttConfig
from daemon.exitcodes import EX_TEMPFAIL, EX_UNAVAILABLE, ExitError

SETTLE_S = 1.0
"""After the SUBACK, how long to wait for the broker's retained messages."""


@dataclass(frozen=True)
class Retired:
    """What :func:`retire_node` cleared: the topics, and the other nodes seen (for a mistyped name)."""

    topics: tuple[str, ...]
    other_nodes: tuple[str, ...]


def _retained(cfg: MqttConfig, filters: list[str]) -> dict[str, bytes]:
    """The broker's retained messages matching ``filters``: topic -> payload."""
    from daemon.sinks.mqtt import connect_hint, new_client

    got: dict[str, bytes] = {}
    subscribed = threading.Event()
    refused: list[str] = []
    client = new_client(cfg, f"audiocap-retire-{uuid.uuid4().hex[:8]}")

    def on_connect(c, userdata, flags, reason, properties):
        if reason.is_failure:
            refused.append(str(reason))
            subscribed.set()
        else:
            c.subscribe([(f, 1) for f in filters])

    def on_message(c, userdata, msg):
        if msg.retain and msg.payload:
            got[msg.topic] = msg.payload

    client.on_connect = on_connect
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = on_message
    try:
        client.connect(cfg.host, cfg.effective_port, keepalive=cfg.keepalive_s)
    except OSError as exc:
        raise ExitError(f"cannot reach MQTT broker {cfg.host}:{cfg.effective_port} "
                        f"({exc.strerror or exc}){connect_hint(cfg, exc)}", EX_UNAVAILABLE) from None
    client.loop_start()
    try:
        if not subscribed.wait(10.0):
            raise ExitError(f"MQTT broker {cfg.host}:{cfg.effective_port} did not answer within 10 s"
                            f"{connect_hint(cfg, None)}", EX_UNAVAILABLE)
        if refused:
            raise ExitError(f"MQTT broker {cfg.host}:{cfg.effective_port} refused the connection: {refused[0]}",
                            EX_UNAVAILABLE)
        time.sleep(SETTLE_S)
    finally:
        client.disconnect()
        client.loop_stop()
    return got


def _clear(cfg: MqttConfig, topics: list[str]) -> None:
    from daemon.sinks.mqtt import new_client

    client = new_client(cfg, f"audiocap-retire-{uuid.uuid4().hex[:8]}")
    client.connect(cfg.host, cfg.effective_port, keepalive=cfg.keepalive_s)
    client.loop_start()
    try:
        infos = [client.publish(t, b"", qos=1, retain=True) for t in topics]
        for info in infos:
            info.wait_for_publish(10.0)
        if not all(info.is_published() for info in infos):
            raise ExitError(f"MQTT broker {cfg.host}:{cfg.effective_port} did not acknowledge the clearing "
                            "in 10 s; run it again", EX_TEMPFAIL)
    finally:
        client.disconnect()
        client.loop_stop()


def _is_nodes(payload: bytes, node: str) -> bool:
    """A Home Assistant discovery config of ``node``'s device."""
    try:
        identifiers = json.loads(payload)["device"]["identifiers"]
    except (ValueError, KeyError, TypeError):
        return False
    return f"audiocap_{node}" in identifiers


def retire_node(cfg: MqttConfig, node: str) -> Retired:
    """Clears every retained message of ``node`` (status, states, discovery).

    Raises:
      ExitError: the broker cannot be reached (69), the node is online (75).
    """
    base = f"{cfg.prefix}/{node}"
    digest = f"{cfg.prefix}/_history/digest/{node}"  # the caption history's day of that node (docs/history.md)
    found = _retained(cfg, [f"{base}/#", f"{cfg.discovery_prefix}/+/+/config", f"{cfg.prefix}/+/status", digest])
    if found.get(f"{base}/status") == b"online":
        raise ExitError(f"node '{node}' is online on MQTT broker {cfg.host}:{cfg.effective_port} (an audiocapd "
                        "is connected as it and would announce it again): stop that daemon first, then retire it",
                        EX_TEMPFAIL)
    topics = sorted(t for t, p in found.items() if t.startswith(f"{base}/") or t == digest or
                    (t.startswith(f"{cfg.discovery_prefix}/") and _is_nodes(p, node)))
    others = sorted({t.split("/")[-2] for t in found if t.endswith("/status") and t.startswith(f"{cfg.prefix}/")}
                    - {node})
    if topics:
        _clear(cfg, topics)
    return Retired(tuple(topics), tuple(others))
