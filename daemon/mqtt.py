"""The MQTT sink: captions, scores, per-class state, status, metrics, Home Assistant discovery.

Topics (``<base>`` = ``<prefix>/<node>``):

* ``<base>/status``: ``online``/``offline``, retained, QoS 1; ``offline`` is the
  last will, so it also appears when the daemon dies.
* ``<base>/events``: caption events (JSON), QoS 1, not retained.
* ``<base>/scores``: one JSON per window, QoS 0 (skipped while disconnected).
* ``<base>/state/<Class>``: ``ON``/``OFF``, retained, QoS 1.
* ``<base>/metrics``: health JSON every 30 s, QoS 0.
* ``<discovery_prefix>/binary_sensor/<node>_<class>/config``: Home Assistant
  discovery, retained, re-sent when ``<discovery_prefix>/status`` says ``online``.

Delivery. paho's network thread (``loop_start``) owns the socket and reconnects
with back-off, also when the broker is down at start-up. QoS 1 messages
published while disconnected stay in paho's ordered outgoing queue, bounded by
``queue_size``, and are sent in order after the next CONNACK; a message that
does not fit is counted in ``dropped`` and logged. Delivery is confirmed by
PUBACK (``on_publish``), which is also where the publish latency is measured.
Captions and states still unacknowledged when the daemon exits (broker down at
SIGTERM) are written to a spool file and re-sent first at the next start.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from daemon.config import MqttConfig
from daemon.sinks import SinkContext
from pipeline import captions, params
from pipeline.events import CaptionEvent

_LOGGER = logging.getLogger(__name__)

SPOOL_NAME = "mqtt-spool.jsonl"
"""Under systemd, undelivered captions go to ``$STATE_DIRECTORY/mqtt-spool.jsonl``."""

try:
    from importlib.metadata import version as _pkg_version

    _VERSION = _pkg_version("audiocap")
except Exception:  # not installed (source tree)
    _VERSION = "0.0.0"


class MqttSink:
    """Publishes to an MQTT broker with paho-mqtt 2.x.

    Args:
      config: the ``[mqtt]`` table (password already resolved).
      ctx: payload context (node, source, model, classes, captions).
    """

    def __init__(self, config: MqttConfig, ctx: SinkContext) -> None:
        self.config = config
        self.ctx = ctx
        self.base = f"{config.prefix}/{ctx.node}"
        self.status_topic = f"{self.base}/status"
        self._lock = threading.Condition()
        # mid -> (topic, origin, publish time, payload, retain), in publish order
        self._unacked: dict[int, tuple[str, float, float, str, bool]] = {}
        self.spool_path = self._spool_path()
        self._early_acks: set[int] = set()  # PUBACKs that beat the registration of their mid
        self._qos0_mids: set[int] = set()  # QoS 0 messages paho has not written yet
        self._state = {name: False for name in ctx.classes}
        self._connected = False
        # QoS 1 messages wait here, in order, until the broker connection is up
        # and paho has re-sent everything older (see _hold_or_hand).
        self._held: collections.deque[tuple[str, str, bool, float]] = collections.deque()
        self._flow_open = False
        self._in_hand = 0  # popped from _held, not yet registered in _unacked
        self._stop_pump = False
        self._pump_thread = threading.Thread(target=self._pump, name="audiocap-mqtt-pump", daemon=True)
        self._ever_connected = False
        self._outage_logged = False
        self._closing = False
        self._latencies: collections.deque[float] = collections.deque(maxlen=params.METRICS_HISTORY)
        self._broker_latencies: collections.deque[float] = collections.deque(maxlen=params.METRICS_HISTORY)
        self.counters = {"published": 0, "acked": 0, "dropped": 0, "scores_skipped": 0, "connects": 0}
        self.client = self._make_client()

    # --- set-up --------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        cfg = self.config
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id or f"audiocap-{self.ctx.node}",
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        client.will_set(self.status_topic, "offline", qos=1, retain=True)
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.password or None)
        if cfg.tls:
            client.tls_set(
                ca_certs=cfg.ca_file or None,
                certfile=cfg.cert_file or None,
                keyfile=cfg.key_file or None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
            client.tls_insecure_set(cfg.tls_insecure)
        client.max_queued_messages_set(cfg.queue_size)
        client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        return client

    @staticmethod
    def _on_socket_open(client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # A caption is an event then a state message, written back to back: with
        # Nagle's algorithm the second waits for the broker's delayed ACK (40 ms).
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):  # not a TCP socket (e.g. a websocket wrapper)
            pass

    def start(self) -> None:
        """Starts connecting in the background (never blocks on the broker)."""
        self._load_spool()
        cfg = self.config
        _LOGGER.info("connecting to MQTT broker %s:%d (tls=%s, user %s)", cfg.host, cfg.effective_port, cfg.tls,
                     cfg.username or "-")
        self._pump_thread.start()
        self.client.connect_async(cfg.host, cfg.effective_port, keepalive=cfg.keepalive_s)
        self.client.loop_start()

    # --- paho callbacks (network thread) --------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            # A refused connection is not a connection (wrong password, not authorised...).
            if not self._outage_logged:
                _LOGGER.error("MQTT broker %s:%d refused the connection: %s; retrying with back-off",
                              self.config.host, self.config.effective_port, reason)
                self._outage_logged = True
            return
        with self._lock:
            self._connected = True
            self.counters["connects"] += 1
            pending_states = {item[0] for item in self._unacked.values() if "/state/" in item[0]}
            pending_states |= {item[0] for item in self._held if "/state/" in item[0]}
        if self._outage_logged or not self._ever_connected:
            _LOGGER.info("connected to MQTT broker %s:%d", self.config.host, self.config.effective_port)
        self._ever_connected = True
        self._outage_logged = False
        if self.config.discovery:
            client.subscribe(f"{self.config.discovery_prefix}/status", qos=1)
        self._publish(self.status_topic, "online", qos=1, retain=True)
        if self.config.discovery:
            self._publish_discovery()
        # A restarted broker without persistence forgot retained states: say them
        # again, unless a newer state for that class is still queued (it would
        # be overtaken by this one).
        for name, on in list(self._state.items()):
            topic = self._state_topic(name)
            if topic not in pending_states:
                self._publish(topic, "ON" if on else "OFF", qos=1, retain=True)
        with self._lock:
            self._release_if_clear()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        if not self._outage_logged:
            _LOGGER.warning("cannot reach MQTT broker %s:%d; retrying with back-off, captions are queued",
                            self.config.host, self.config.effective_port)
            self._outage_logged = True

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        with self._lock:
            was = self._connected
            self._connected = False
            self._flow_open = False
        if self._closing or not was:
            return
        if not self._outage_logged:
            _LOGGER.warning("lost the MQTT broker (%s); reconnecting with back-off, captions are queued", reason)
            self._outage_logged = True

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        now = time.time()
        with self._lock:
            item = self._unacked.pop(mid, None)
            if item is not None:
                self._ack(item, now)
                self._release_if_clear()
            elif mid in self._qos0_mids:
                self._qos0_mids.discard(mid)
            else:
                if len(self._early_acks) > 10000:  # only unregistered mids (e.g. the final offline)
                    self._early_acks.clear()
                self._early_acks.add(mid)

    def _ack(self, item: tuple[str, float, float, str, bool], now: float) -> None:
        topic, origin, published = item[:3]
        self.counters["acked"] += 1
        if origin > 0:
            self._latencies.append(now - origin)
            self._broker_latencies.append(now - published)
        if not self._unacked:
            self._lock.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == f"{self.config.discovery_prefix}/status" and msg.payload == b"online":
            _LOGGER.info("Home Assistant came online: re-sending discovery")
            self._publish_discovery()
            for name, on in list(self._state.items()):
                self._publish(self._state_topic(name), "ON" if on else "OFF", qos=1, retain=True)

    # --- publishing ------------------------------------------------------------------------------

    def _state_topic(self, name: str) -> str:
        return f"{self.base}/state/{name}"

    def _publish(self, topic: str, payload: str, qos: int, retain: bool = False, origin: float = 0.0) -> bool:
        """Publishes one message; QoS 1 ones keep their order across reconnects.

        paho marks itself connected before it re-sends what it queued, so a
        message handed to it at that instant would overtake older ones. QoS 1
        messages therefore go through our own FIFO, which one thread
        (:meth:`_pump`) hands to paho in order, only while the connection is up
        and nothing from before the last reconnect is left unacknowledged.
        """
        if qos == 0:
            return self._hand(topic, payload, qos, retain, origin)
        with self._lock:
            if len(self._held) + len(self._unacked) >= self.config.queue_size:
                self._count_drop(topic)
                return False
            self._held.append((topic, payload, retain, origin))
            self._lock.notify_all()
            return True

    def _release_if_clear(self) -> None:
        """Opens the flow once connected with nothing older in flight (caller holds ``_lock``)."""
        if self._connected and not self._unacked and not self._flow_open:
            self._flow_open = True
            self._lock.notify_all()

    def _pump(self) -> None:
        """The one thread that hands QoS 1 messages to paho, in FIFO order.

        It never holds ``_lock`` while calling paho: paho runs its callbacks
        (which take ``_lock``) with its own mutex held.
        """
        while True:
            with self._lock:
                while not self._stop_pump and not (self._flow_open and self._held):
                    self._lock.wait(0.5)
                if self._stop_pump:
                    return
                topic, payload, retain, origin = self._held.popleft()
                self._in_hand += 1
            try:
                self._hand(topic, payload, 1, retain, origin)
            finally:
                with self._lock:
                    self._in_hand -= 1
                    self._lock.notify_all()

    def _count_drop(self, topic: str) -> None:
        self.counters["dropped"] += 1
        if self.counters["dropped"] == 1 or self.counters["dropped"] % 1000 == 0:
            _LOGGER.error("MQTT queue full (%d messages): dropped %d message(s) so far, latest on %s",
                          self.config.queue_size, self.counters["dropped"], topic)

    def _hand(self, topic: str, payload: str, qos: int, retain: bool = False, origin: float = 0.0) -> bool:
        """Hands one message to paho; QoS 1 ones are tracked until PUBACK."""
        published = time.time()
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            self._count_drop(topic)
            return False
        if qos == 0:
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return False
            with self._lock:
                if info.mid in self._early_acks:
                    self._early_acks.discard(info.mid)
                else:
                    if len(self._qos0_mids) > 10000:  # lost on a disconnect; forget them
                        self._qos0_mids.clear()
                    self._qos0_mids.add(info.mid)
            return True
        self.counters["published"] += 1
        with self._lock:
            if info.mid in self._early_acks:
                self._early_acks.discard(info.mid)
                self._ack((topic, origin, published, payload, retain), time.time())
            else:
                self._unacked[info.mid] = (topic, origin, published, payload, retain)
        return True

    def _publish_discovery(self) -> None:
        device = {
            "identifiers": [f"audiocap_{self.ctx.node}"],
            "name": f"audiocap {self.ctx.node}",
            "manufacturer": "audiocap",
            "model": self.ctx.model,
            "sw_version": _VERSION,
        }
        for name in self.ctx.classes:
            object_id = f"{self.ctx.node}_{name.lower()}"
            payload = {
                "name": self.ctx.captions.get(name, name).strip("[]") or name,
                "unique_id": f"audiocap_{object_id}",
                "object_id": f"audiocap_{object_id}",
                "state_topic": self._state_topic(name),
                "payload_on": "ON",
                "payload_off": "OFF",
                "availability_topic": self.status_topic,
                "payload_available": "online",
                "payload_not_available": "offline",
                "device_class": "sound",
                "device": device,
            }
            topic = f"{self.config.discovery_prefix}/binary_sensor/{object_id}/config"
            self._publish(topic, captions.dumps(payload), qos=1, retain=True)

    def on_scores(self, t_start: float, t_end: float, scores: Any, origin: float) -> None:
        """Publishes the window's scores (QoS 0; skipped while disconnected)."""
        if not self.config.scores:
            return
        if not self._connected:
            self.counters["scores_skipped"] += 1
            return
        payload = captions.scores_payload(t_start, t_end, self.ctx.classes, scores, self.ctx.node, self.ctx.model)
        self._publish(f"{self.base}/scores", captions.dumps(payload), qos=0)

    def on_event(self, event: CaptionEvent) -> None:
        """Publishes the caption event and the class state (QoS 1, queued if disconnected)."""
        payload = captions.event_payload(event, self.ctx.node, self.ctx.source, self.ctx.model)
        self._publish(f"{self.base}/events", captions.dumps(payload), qos=1, origin=event.origin)
        on = event.type == "start"
        self._state[event.label] = on
        self._publish(self._state_topic(event.label), "ON" if on else "OFF", qos=1, retain=True)

    def on_metrics(self, metrics: dict[str, Any]) -> None:
        """Publishes the health message (QoS 0)."""
        if self._connected:
            self._publish(f"{self.base}/metrics", captions.dumps(metrics), qos=0)

    # --- shutdown and health -------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the broker accepted the current connection."""
        return self._connected

    def queue_depth(self) -> int:
        """QoS 1 messages not yet acknowledged by the broker."""
        with self._lock:
            return len(self._unacked) + len(self._held)

    def drain(self, timeout: float) -> bool:
        """Waits until every QoS 1 message was acknowledged, or ``timeout`` s.

        Returns:
          True when nothing is left unacknowledged.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        with self._lock:
            while self._unacked or self._held or self._in_hand:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(min(left, 0.1))
            left_over = len(self._unacked) + len(self._held) + self._in_hand
        if left_over:
            _LOGGER.warning("%d MQTT message(s) were not acknowledged within %.1f s", left_over, timeout)
        return left_over == 0

    def close(self, timeout: float = 0.5) -> None:
        """Publishes ``offline`` (retained), disconnects and stops the network thread."""
        self._closing = True
        if self._connected:
            info = self.client.publish(self.status_topic, "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=timeout)
            except (RuntimeError, ValueError):  # disconnected meanwhile / queue refused
                pass
        with self._lock:
            self._stop_pump = True
            self._lock.notify_all()
        if self._pump_thread.is_alive():
            self._pump_thread.join(timeout=2.0)
        self.client.disconnect()
        self.client.loop_stop()
        self._write_spool()
        _LOGGER.info("MQTT closed: %d published, %d acknowledged, %d dropped",
                     self.counters["published"], self.counters["acked"], self.counters["dropped"])

    # --- spool: captions not delivered at exit survive a restart -----------------------------

    def _spool_path(self) -> Path | None:
        if self.config.spool_file:
            return Path(self.config.spool_file)
        state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        return Path(state) / SPOOL_NAME if state else None

    def _write_spool(self) -> None:
        """Writes captions and states still unacknowledged at exit, in order."""
        with self._lock:
            left = [(t, p, r) for t, _, _, p, r in self._unacked.values() if t.endswith("/events") or "/state/" in t]
            left += [(t, p, r) for t, p, r, _ in self._held if t.endswith("/events") or "/state/" in t]
        if not left or self.spool_path is None:
            if left:
                _LOGGER.error("%d caption/state message(s) undelivered at exit and no spool file is set "
                              "([mqtt] spool_file): they are lost", len(left))
            return
        lines = "".join(json.dumps({"topic": t, "payload": p, "retain": r}) + "\n" for t, p, r in left)
        try:
            captions.write_atomic(self.spool_path, lines)
        except OSError as exc:
            _LOGGER.error("cannot write the spool %s (%s): %d message(s) lost", self.spool_path, exc, len(left))
            return
        _LOGGER.warning("%d caption/state message(s) not delivered: kept in %s for the next start",
                        len(left), self.spool_path)

    def _load_spool(self) -> None:
        """Queues what the last run could not deliver, ahead of anything new."""
        path = self.spool_path
        if path is None or not path.is_file():
            return
        sent = bad = 0
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            _LOGGER.error("cannot read the spool %s: %s", path, exc)
            return
        for line in lines:
            try:
                item = json.loads(line)
                topic, payload, retain = str(item["topic"]), str(item["payload"]), bool(item["retain"])
            except (ValueError, KeyError, TypeError):
                bad += 1
                continue
            sent += self._publish(topic, payload, qos=1, retain=retain)
        path.unlink(missing_ok=True)
        _LOGGER.info("re-sending %d message(s) kept from the last run (%d unreadable line(s) skipped)", sent, bad)

    def latencies(self) -> list[float]:
        """Recent latencies from the end of the audio block behind a caption event to its PUBACK, seconds."""
        with self._lock:
            return list(self._latencies)

    def broker_latencies(self) -> list[float]:
        """Recent latencies from handing a caption event to paho to its PUBACK, seconds."""
        with self._lock:
            return list(self._broker_latencies)

    def stats(self) -> dict[str, Any]:
        """Counters for the metrics message."""
        return {
            "mqtt_connected": self._connected,
            "mqtt_queue": self.queue_depth(),
            "mqtt_dropped": self.counters["dropped"],
            "mqtt_published": self.counters["published"],
            "mqtt_acked": self.counters["acked"],
            "mqtt_connects": self.counters["connects"],
        }
