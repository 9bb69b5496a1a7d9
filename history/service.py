"""The history service: MQTT in (captions, queries), SQLite, MQTT out (answers, digests, discovery).

Topics (``<p>`` = the prefix, ``<h>`` = ``<p>/_history``):

* reads ``<p>/+/events`` (QoS 1) with a fixed client id and a persistent
  MQTT 5 session: what arrives while the service or the broker is away waits
  in the broker;
* reads ``<p>/+/status`` on the same session: the empty message that
  ``audiocapd --retire-node`` leaves there retires the node here too (its
  digest and sensors are cleared and not said again, even after a restart,
  until the node speaks again; its captions stay queryable);
* answers queries on ``<h>/request`` (MQTT 5 request/response: the answer goes
  to the request's response topic, which must lie under ``<h>/response/``,
  with its correlation data);
* publishes ``<h>/digest/<node>`` (retained): the node's day so far;
  ``<h>/status`` (retained ``online``/``offline``, the last will);
  ``<h>/metrics`` (retained JSON: counts, skipped input by kind, disk state);
  Home Assistant discovery for the digest sensors.

Nothing lost. paho runs with ``manual_ack``: a caption is acknowledged to the
broker only once its transaction is committed (``synchronous = FULL``). A
SIGKILL between the two leaves it unacknowledged, and the broker sends it again
(the upsert makes a repeat harmless). When the disk is full the captions stay
unacknowledged and are retried every few seconds; the broker holds back the
rest (its in-flight window), queries are still answered from what is stored.

Threads: paho's network thread only puts messages in ``inbox``; one worker
(:meth:`HistoryService.run`) owns the database and does everything else.
"""

from __future__ import annotations

import collections
import json
import logging
import queue
import ssl
import threading
import time
from datetime import datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from daemon.sdnotify import Notifier
from daemon.sinks.mqtt import object_id
from history.config import HistoryConfig
from history.inputs import Skip, Skips, parse_caption, parse_request
from history.store import DiskFull, Store, StoreError

_LOGGER = logging.getLogger("audiocap-history")

BATCH = 2000
"""Most messages handled in one transaction."""
RETRY_S = 5.0
"""How often writes are retried while the database cannot be written."""
DIGEST_MIN_S = 1.0
"""A node's digest is refreshed at most this often (a flood is not a digest storm)."""
PRUNE_S = 60.0
METRICS_S = 30.0


def day_start_ms(now_s: float) -> int:
    """The service's local midnight before ``now_s``, in epoch ms."""
    d = datetime.fromtimestamp(now_s)
    return int(d.replace(hour=0, minute=0, second=0, microsecond=0).timestamp() * 1000)


class _Entry:
    """A received message waiting for its PUBACK (sent in arrival order, once handled)."""

    __slots__ = ("mid", "qos", "done")

    def __init__(self, mid: int, qos: int) -> None:
        self.mid, self.qos, self.done = mid, qos, False


class HistoryService:
    """Runs until :meth:`stop` (or SIGTERM via the CLI).

    Args:
      config: the configuration (password resolved).
      store: the open database.
      notifier: systemd's notify socket (a no-op outside systemd).
    """

    def __init__(self, config: HistoryConfig, store: Store, notifier: Notifier | None = None) -> None:
        self.config = config
        self.store = store
        self.notifier = notifier or Notifier({})
        m = config.mqtt
        self.events_filter = f"{m.prefix}/+/events"
        self.request_topic = m.topic("request")
        self.response_prefix = m.topic("response") + "/"
        self.status_topic = m.topic("status")
        self.metrics_topic = m.topic("metrics")
        self.inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.skips = Skips()
        self.counters = {"written": 0, "requests": 0, "answered": 0, "connects": 0, "digests": 0}
        self.connected = False
        self.disk_full = ""
        self._stop = threading.Event()
        self._acks: collections.deque[_Entry] = collections.deque()
        self._pending: list[tuple[_Entry, Any]] = []
        self._retry_at = 0.0
        self._prune_at = 0.0
        self._metrics_at = 0.0
        self._digest_due: set[str] = set()
        self._digest_at: dict[str, float] = {}
        self._discovered: set[str] = set()
        self._discovery_due = False
        self._retired = store.retired()
        self._day = day_start_ms(time.time())
        self._tokens = config.history.max_requests_per_s * 2
        self._tokens_at = time.monotonic()
        # Captions come on a persistent session acknowledged only once stored; queries on a
        # second, plain session, so that answers flow even while captions wait (a full disk).
        self.client = self._make_client(config.mqtt.client_id, captions=True)
        self.qclient = self._make_client(config.mqtt.client_id + "-query", captions=False)

    # --- MQTT ------------------------------------------------------------------------

    def _make_client(self, client_id: str, captions: bool) -> mqtt.Client:
        m = self.config.mqtt
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                             manual_ack=captions)
        if captions:
            client.will_set(self.status_topic, "offline", qos=1, retain=True)
        if m.username:
            client.username_pw_set(m.username, m.password or None)
        if m.tls:
            client.tls_set(ca_certs=m.ca_file or None, certfile=m.cert_file or None, keyfile=m.key_file or None,
                           cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
            client.tls_insecure_set(m.tls_insecure)
        client.reconnect_delay_set(1, 30)
        if captions:
            client.on_connect = self._on_connect
            client.on_disconnect = self._on_disconnect
            # Captions published before the broker acknowledged the subscription of a new session are not kept
            # for us: this line says from when on none is lost.
            client.on_subscribe = lambda *_: _LOGGER.info("receiving captions (%s)", self.events_filter)
        else:
            client.on_connect = lambda c, *_: c.subscribe(self.request_topic, qos=1)
        client.on_message = lambda _c, _u, msg: self.inbox.put(msg)
        return client

    def start(self) -> None:
        """Connects in the background (never blocks on the broker)."""
        m = self.config.mqtt
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = m.session_expiry_s
        _LOGGER.info("connecting to MQTT broker %s:%d as %s (tls=%s, user %s), database %s", m.host,
                     m.effective_port, m.client_id, m.tls, m.username or "-", self.store.path)
        self.client.connect_async(m.host, m.effective_port, keepalive=m.keepalive_s, clean_start=False,
                                  properties=props)
        self.client.loop_start()
        self.qclient.connect_async(m.host, m.effective_port, keepalive=m.keepalive_s, clean_start=True)
        self.qclient.loop_start()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        m = self.config.mqtt
        if reason.is_failure:
            _LOGGER.error("MQTT broker %s:%d refused the connection: %s; retrying", m.host, m.effective_port, reason)
            return
        self.connected = True
        self.counters["connects"] += 1
        _LOGGER.info("connected to MQTT broker %s:%d (session %s)", m.host, m.effective_port,
                     "resumed" if flags.session_present else "new")
        subs = [(self.events_filter, SubscribeOptions(qos=1)), (f"{m.prefix}/+/status", SubscribeOptions(qos=1))]
        if m.discovery:
            subs.append((f"{m.discovery_prefix}/status", SubscribeOptions(qos=1)))
        client.subscribe(subs)
        client.publish(self.status_topic, "online", qos=1, retain=True)
        self._discovery_due = True

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if self.connected and not self._stop.is_set():
            _LOGGER.warning("lost the MQTT broker (%s); reconnecting, the broker keeps the captions meanwhile", reason)
        self.connected = False

    def _publish(self, topic: str, payload: Any, retain: bool = False, qos: int = 1) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        self.client.publish(topic, text, qos=qos, retain=retain)

    # --- the worker ------------------------------------------------------------------

    def stop(self) -> None:
        """Asks :meth:`run` to finish (safe from a signal handler)."""
        self._stop.set()

    def run(self) -> int:
        """Connects, then handles messages until :meth:`stop`; returns the exit code."""
        self.start()
        self.notifier.ready(f"history of {self.config.mqtt.prefix}/+/events in {self.store.path}")
        self._maintain(force=True)
        period = self.notifier.watchdog_s / 2 if self.notifier.watchdog_s else None
        next_dog = time.monotonic()
        while not self._stop.is_set():
            self.step(0.2)
            self._maintain()
            if period and time.monotonic() >= next_dog:
                self.notifier.watchdog()
                next_dog = time.monotonic() + period
        return self.shutdown()

    def shutdown(self, timeout: float = 1.0) -> int:
        """Stores and acknowledges what has arrived, says ``offline``, disconnects, closes the database."""
        self.notifier.stopping("storing what has arrived")
        deadline = time.monotonic() + timeout
        while not self.inbox.empty() and time.monotonic() < deadline:
            self.step(0)
        if self._pending:
            self._retry_at = 0.0
            self._write_pending()
        self._flush_acks()
        if self.connected:
            self.connected = False  # what the last metrics say
            self._publish(self.metrics_topic, self.metrics(), retain=True, qos=1)
            info = self.client.publish(self.status_topic, "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=max(0.1, deadline - time.monotonic()))
            except (RuntimeError, ValueError):
                pass
        for client in (self.client, self.qclient):
            client.disconnect()
            client.loop_stop()
        left = len(self._pending)
        self.store.close()
        _LOGGER.info("stopped: %d caption events written, %d queries answered, skipped %s%s",
                     self.counters["written"], self.counters["answered"], self.skips.counts or "none",
                     f"; {left} unwritten (unacknowledged: the broker sends them again)" if left else "")
        return 0

    def step(self, timeout: float) -> None:
        """Handles what arrived (waiting up to ``timeout`` s for the first message)."""
        msgs: list[mqtt.MQTTMessage] = []
        try:
            msgs.append(self.inbox.get(timeout=timeout) if timeout > 0 else self.inbox.get_nowait())
            while len(msgs) < BATCH:
                msgs.append(self.inbox.get_nowait())
        except queue.Empty:
            pass
        requests = []
        prefix = self.config.mqtt.prefix + "/"
        for msg in msgs:
            topic = msg.topic
            if topic == self.request_topic:  # the query session: paho acknowledged it
                requests.append(msg)
                continue
            entry = _Entry(msg.mid, msg.qos)
            self._acks.append(entry)
            entry.done = True
            levels = topic[len(prefix):].split("/") if topic.startswith(prefix) else []
            if len(levels) == 2 and levels[1] == "events" and not levels[0].startswith("_"):
                try:
                    self._pending.append((entry, parse_caption(levels[0], msg.payload)))
                    entry.done = False
                except Skip as exc:
                    self.skips.add(exc, topic)
            elif len(levels) == 2 and levels[1] == "status" and not levels[0].startswith("_"):
                self._node_status(levels[0], msg.payload)
            elif topic == f"{self.config.mqtt.discovery_prefix}/status" and msg.payload == b"online":
                self._discovery_due = True
        self._write_pending()
        for msg in requests:  # after the captions that came before them are stored
            self._answer(msg)
        self._flush_acks()

    def _write_pending(self) -> None:
        if not self._pending or time.monotonic() < self._retry_at:
            return
        try:
            self.store.add(c for _, c in self._pending)
        except StoreError as exc:
            self.store.checkpoint()  # the WAL's pages go to the database file: room for the retry
            if not self.disk_full:
                kind = "full" if isinstance(exc, DiskFull) else "failing"
                _LOGGER.error("database %s: %s; %d caption event(s) wait unacknowledged (the broker keeps the "
                              "rest), queries are still answered; retrying every %.0f s", kind, exc,
                              len(self._pending), RETRY_S)
                self.disk_full = str(exc)
                self.notifier.status(f"cannot write the database: {exc}")
                self._publish_metrics()
            else:
                _LOGGER.debug("database still failing: %s (%d waiting)", exc, len(self._pending))
            self._retry_at = time.monotonic() + RETRY_S
            return
        if self.disk_full:
            _LOGGER.warning("database writable again: %d waiting caption event(s) written", len(self._pending))
            self.disk_full = ""
            self.notifier.status("running")
            self._publish_metrics()
        for entry, c in self._pending:
            entry.done = True
            self._digest_due.add(c.node)
            if c.start_ms > self._retired.get(c.node, c.start_ms):  # a retired node speaks again
                self._node_status(c.node, b"online")
        self.counters["written"] += len(self._pending)
        self._pending = []

    def _node_status(self, node: str, payload: bytes) -> None:
        """A node's status: empty (retired with ``audiocapd --retire-node``) or online/offline (in service)."""
        try:
            if not payload and node not in self._retired:
                at = int(time.time() * 1000)
                self.store.set_retired(node, at)
                self._retired[node] = at
                self._digest_due.discard(node)
                self._discovered.discard(node)
                # Cleared here too: a digest said before the retirement reached us would bring it back.
                for topic in [self.config.mqtt.topic("digest", node), *discovery_configs(self.config, node)]:
                    self.client.publish(topic, b"", qos=1, retain=True)
                _LOGGER.info("node '%s' was retired: its digest and sensors are cleared, its captions kept", node)
            elif payload and node in self._retired:
                self.store.set_retired(node, None)
                del self._retired[node]
                self._digest_due.add(node)
                _LOGGER.info("node '%s' is back in service after its retirement", node)
        except StoreError as exc:
            _LOGGER.warning("could not record node '%s' as %s: %s", node, "back" if payload else "retired", exc)

    def _flush_acks(self) -> None:
        while self._acks and self._acks[0].done:
            entry = self._acks.popleft()
            if entry.qos > 0:
                self.client.ack(entry.mid, entry.qos)

    # --- queries ---------------------------------------------------------------------

    def _answer(self, msg: mqtt.MQTTMessage) -> None:
        self.counters["requests"] += 1
        props = getattr(msg, "properties", None)
        response = getattr(props, "ResponseTopic", None)
        corr = getattr(props, "CorrelationData", None)
        if not response or not response.startswith(self.response_prefix) or any(c in response for c in "#+"):
            self.skips.add(Skip("no_response_topic", f"response topic {str(response)[:80]!r}"), msg.topic)
            return
        rate = self.config.history.max_requests_per_s
        now = time.monotonic()
        self._tokens = min(rate * 2, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens < 1:
            self.skips.add(Skip("request_flood", f"over {rate:g}/s"), msg.topic)
            return
        self._tokens -= 1
        out_props = Properties(PacketTypes.PUBLISH)
        if corr is not None:
            out_props.CorrelationData = corr
        try:
            answer = self.query(msg.payload)
        except Skip as exc:
            self.skips.add(exc, msg.topic)
            answer = {"ok": False, "error": str(exc), "kind": exc.kind}
        self.qclient.publish(response, json.dumps(answer, ensure_ascii=False, separators=(",", ":")), qos=1,
                             properties=out_props)
        self.counters["answered"] += 1

    def query(self, payload: bytes) -> dict[str, Any]:
        """One query's answer (see :func:`history.inputs.parse_request`).

        Raises:
          Skip: the query is not understood.
        """
        now_ms = int(time.time() * 1000)
        req = parse_request(payload, now_ms, self.config.history.max_answer)
        q = req["q"]
        if q == "hourly":
            body = self.store.hourly(req["from_ms"], req["hours"], req["nodes"])
        else:
            body = self.store.captions(req["since_ms"], req["until_ms"], req["nodes"], req["labels"],
                                       urgent_only=q == "urgent", limit=req["limit"], before=req["before"])
            if req["limited"]:
                body["limited"] = self.config.history.max_answer  # asked for more than one answer holds
        return {"ok": True, "q": q, **body, **({"disk_full": True} if self.disk_full else {})}

    # --- digests, discovery, upkeep --------------------------------------------------

    def _maintain(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now >= self._prune_at:
            self._prune_at = now + PRUNE_S
            try:
                gone = self.store.prune()
                if gone:
                    _LOGGER.info("deleted %d caption(s) past the retention or the size bound", gone)
            except StoreError as exc:
                _LOGGER.warning("could not prune the database: %s", exc)
        day = day_start_ms(time.time())
        if force or day != self._day:  # a new day: every digest starts again
            self._day = day
            self._digest_due.update(self.store.nodes())
        if self.connected and self._discovery_due and self.config.mqtt.discovery:
            self._discovery_due = False
            self._discovered.clear()
            self._digest_due.update(self.store.nodes())
        if self.connected:
            for node in sorted(self._digest_due):
                if force or now >= self._digest_at.get(node, 0.0) + DIGEST_MIN_S:
                    self._publish_digest(node)
                    self._digest_due.discard(node)
                    self._digest_at[node] = now
        if force or now >= self._metrics_at:
            self._metrics_at = now + METRICS_S
            self._publish_metrics()

    def _publish_digest(self, node: str) -> None:
        digest = self.store.digest(node, self._day, int(time.time() * 1000))
        self._publish(self.config.mqtt.topic("digest", node), digest, retain=True)
        self.counters["digests"] += 1
        if self.config.mqtt.discovery and node not in self._discovered:
            for topic, cfg in discovery_configs(self.config, node).items():
                self._publish(topic, cfg, retain=True)
            self._discovered.add(node)

    def metrics(self) -> dict[str, Any]:
        """What the service reports about itself."""
        return {**self.counters, "skipped": dict(self.skips.counts), "pending": len(self._pending),
                "disk_full": bool(self.disk_full), "error": self.disk_full or None,
                "db_bytes": self.store.used_bytes(), "connected": self.connected}

    def _publish_metrics(self) -> None:
        if self.connected:
            self._publish(self.metrics_topic, self.metrics(), retain=True, qos=0)


def discovery_configs(config: HistoryConfig, node: str) -> dict[str, dict[str, Any]]:
    """Home Assistant discovery for a node's digest: sounds today, urgent sounds today, the last urgent sound.

    The sensors join the node's own device (``audiocap <node>``, the daemon's
    identifiers) and are available while the history service is online.
    """
    m = config.mqtt
    digest = m.topic("digest", node)
    common = {
        "availability_topic": m.topic("status"),
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": {"identifiers": [f"audiocap_{node}"], "name": f"audiocap {node}", "manufacturer": "audiocap"},
        "state_topic": digest,
    }
    sensors = {
        "sounds_today": {"name": "Sounds today", "value_template": "{{ value_json.total_today }}",
                         "state_class": "total", "icon": "mdi:ear-hearing"},
        "urgent_today": {"name": "Urgent sounds today", "value_template": "{{ value_json.urgent_today }}",
                         "state_class": "total", "icon": "mdi:alarm-light"},
        "last_urgent": {"name": "Last urgent sound", "device_class": "timestamp",
                        "value_template": "{{ value_json.last_urgent.start if value_json.last_urgent else None }}",
                        "json_attributes_topic": digest,
                        "json_attributes_template": "{{ (value_json.last_urgent or {}) | tojson }}",
                        "icon": "mdi:alarm-light"},
    }
    out = {}
    for key, sensor in sensors.items():
        oid = object_id(node, f"history_{key}")
        out[f"{m.discovery_prefix}/sensor/{oid}/config"] = {"unique_id": f"audiocap_{oid}",
                                                           "object_id": f"audiocap_{oid}", **sensor, **common}
    return out

